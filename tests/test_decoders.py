import itertools

import pytest
import torch

from featinv.decoders import SeedDecoder, build_decoder, count_parameters, decoder_from_spec

SHAPES = {"layer1": (256, 56, 56), "layer2": (512, 28, 28), "layer3": (1024, 14, 14), "layer4": (2048, 7, 7)}
SUBSETS = [c for r in range(1, 5) for c in itertools.combinations(SHAPES, r)]


def _features(names, batch=2):
    torch.manual_seed(0)
    return {k: torch.randn(batch, *SHAPES[k]) * 3 for k in names}


@pytest.mark.parametrize("name", ["pyramid", "seed"])
@pytest.mark.parametrize("subset", SUBSETS, ids=lambda s: "+".join(s))
def test_any_layer_subset_gives_224_rgb_in_unit_range(name, subset):
    dec = build_decoder(name, {k: SHAPES[k] for k in subset}, 224, width=16).eval()
    with torch.no_grad():
        y = dec(_features(subset))
    assert y.shape == (2, 3, 224, 224)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_seed_decoder_matches_the_original_shape():
    """ConvOnlyDecoder: concat at 7×7 (3840 channels), five ConvTranspose2d(4, 2, 1) stages
    →512→256→128→64→3, ReLU between, Sigmoid last."""
    dec = SeedDecoder(SHAPES)
    convs = [m for m in dec.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3840, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    acts = [type(m).__name__ for m in dec.net if not isinstance(m, torch.nn.ConvTranspose2d)]
    assert acts == ["ReLU"] * 4 + ["Sigmoid"]
    expected = sum(a * b * 16 + b for a, b in [(3840, 512), (512, 256), (256, 128), (128, 64), (64, 3)])
    assert count_parameters(dec) == expected
    assert dec.size == (7, 7)


def test_pyramid_uses_each_map_at_native_resolution():
    dec = build_decoder("pyramid", SHAPES, 224, width=16)
    seen = {}
    for k, mod in dec.lateral.items():
        mod.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, tuple(i[0].shape[-2:])))
    with torch.no_grad():
        dec.eval()(_features(SHAPES))
    assert seen == {k: v[1:] for k, v in SHAPES.items()}


def test_spec_rebuilds_the_same_decoder():
    dec = build_decoder("pyramid", {"layer2": SHAPES["layer2"]}, 224, width=24)
    again = decoder_from_spec(dec.spec)
    again.load_state_dict(dec.state_dict())
    f = _features(["layer2"])
    with torch.no_grad():
        assert torch.equal(dec.eval()(f), again.eval()(f))


@pytest.mark.parametrize("upsample", ["convtranspose", "pixelshuffle", "resize"])
@pytest.mark.parametrize("fusion", ["add", "concat"])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_pyramid_knobs_give_224_rgb_and_rebuild_from_spec(upsample, fusion, norm):
    names = ["layer1", "layer3"]
    dec = build_decoder("pyramid", {k: SHAPES[k] for k in names}, 224, width=16, blocks=1,
                        upsample=upsample, fusion=fusion, norm=norm).eval()
    f = _features(names)
    with torch.no_grad():
        y = dec(f)
    assert y.shape == (2, 3, 224, 224) and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    again = decoder_from_spec(dec.spec)
    again.load_state_dict(dec.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(f), y)
    kinds = {"convtranspose": torch.nn.ConvTranspose2d, "pixelshuffle": torch.nn.PixelShuffle, "resize": torch.nn.Upsample}
    assert sum(isinstance(m, kinds[upsample]) for m in dec.up.modules()) == 2  # 56 → 112 → 224
    assert len(dec.blocks) == 1
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in dec.refine.modules()) == (norm == "batch")


def test_residual_block_starts_as_a_function_of_its_input_plus_a_correction():
    from featinv.decoders import ResBlock

    block = ResBlock(8).eval()
    torch.nn.init.zeros_(block.body[-1].weight)  # last norm scaled to zero: the block is the identity
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_bad_decoder_options_are_refused():
    from featinv.utils import FeatinvError

    with pytest.raises(FeatinvError, match="upsample must be one of"):
        build_decoder("pyramid", SHAPES, 224, upsample="nearest")
    with pytest.raises(FeatinvError, match="blocks must be >= 0"):
        build_decoder("pyramid", SHAPES, 224, blocks=-1)


def test_default_decoder_config_is_what_train_builds():
    from featinv.config import DecoderConfig

    dc = DecoderConfig()
    dec = build_decoder(dc.name, SHAPES, 224, **dc.options())
    assert dec.spec["options"] == {"width": dc.width, "blocks": dc.blocks, "upsample": dc.upsample,
                                   "fusion": dc.fusion, "norm": dc.norm}
    assert build_decoder("seed", SHAPES, 224, **DecoderConfig(name="seed").options()).spec["options"] == {}
