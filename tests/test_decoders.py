import itertools

import pytest
import torch

from featinv.decoders import SeedDecoder, build_decoder, count_parameters, decoder_from_spec

SHAPES = {"layer1": (256, 56, 56), "layer2": (512, 28, 28), "layer3": (1024, 14, 14), "layer4": (2048, 7, 7)}
SUBSETS = [c for r in range(1, 5) for c in itertools.combinations(SHAPES, r)]


def _features(names, batch=2):
    torch.manual_seed(0)
    return {k: torch.randn(batch, *SHAPES[k]) * 3 for k in names}


@pytest.mark.parametrize("name", ["ladder", "pyramid", "seed"])
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


@pytest.mark.parametrize("upsample", ["convtranspose", "pixelshuffle", "resize", "lowres"])
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
    kinds = {"convtranspose": torch.nn.ConvTranspose2d, "pixelshuffle": torch.nn.PixelShuffle, "resize": torch.nn.Upsample,
             "lowres": torch.nn.Upsample}
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
    assert dc.name == "ladder"
    assert dec.spec["options"] == {"width": dc.width, "max_width": dc.max_width, "blocks": dc.blocks,
                                   "upsample": dc.upsample, "norm": dc.norm}
    pyr = DecoderConfig(name="pyramid")
    assert build_decoder("pyramid", SHAPES, 224, **pyr.options()).spec["options"] == {
        "width": pyr.width, "blocks": pyr.blocks, "upsample": pyr.upsample, "fusion": pyr.fusion, "norm": pyr.norm}
    assert build_decoder("seed", SHAPES, 224, **DecoderConfig(name="seed").options()).spec["options"] == {}


# ── the ladder decoder ────────────────────────────────────────────────────────────────────────

LITE0 = {"stage1": (24, 56, 56), "stage2": (40, 28, 28), "stage3": (112, 14, 14), "stage4": (320, 7, 7)}


def test_ladder_spends_channels_by_depth():
    """The path at stride s has width·s/4 channels, capped: a coarse map gets many channels."""
    dec = build_decoder("ladder", LITE0, 224, width=32, max_width=128)
    widths = {k: dec.lateral[dec.index[k]][0].out_channels for k in LITE0}
    assert widths == {"stage1": 32, "stage2": 64, "stage3": 128, "stage4": 128}
    alone = build_decoder("ladder", {"stage4": LITE0["stage4"]}, 224, width=32, max_width=128)
    assert alone.lateral[0][0].out_channels == 128
    assert len(alone.up) == 5  # 7 → 224: five ×2 stages, halving channels down to 16
    assert [s.conv.out_channels for s in alone.up] == [64, 32, 16, 16, 16]


@pytest.mark.parametrize("finest", ["stage1", "stage2"])
def test_deeper_taps_join_through_a_zero_path(finest):
    """At initialisation the all-taps decoder computes exactly what the finest tap's own decoder
    computes: same seed, same weights for the shared path, deeper taps contribute zero."""
    taps = [k for k in LITE0 if LITE0[k][1] <= LITE0[finest][1]]
    torch.manual_seed(3)
    alone = build_decoder("ladder", {finest: LITE0[finest]}, 224, width=16, max_width=64)
    torch.manual_seed(3)
    deep = build_decoder("ladder", {k: LITE0[k] for k in taps}, 224, width=16, max_width=64)
    shared = {k: v for k, v in deep.state_dict().items() if k in alone.state_dict()}
    assert all(torch.equal(v, alone.state_dict()[k]) for k, v in shared.items())  # built from the same stream
    torch.manual_seed(0)
    feats = {k: torch.randn(2, *LITE0[k]) for k in taps}
    for mode in ("eval", "train"):
        getattr(alone, mode)(), getattr(deep, mode)()
        with torch.no_grad():
            assert torch.equal(deep(feats), alone({finest: feats[finest]}))
    # ... and the deeper taps are wired in: the gate next to the finest tap learns at once, each
    # deeper one a step later (its output reaches the image through the gates below it).
    opt = torch.optim.SGD(deep.parameters(), lr=0.5)
    deep.train()
    for _ in range(len(taps) - 1):
        opt.zero_grad()
        (deep(feats) - 0.5).square().mean().backward()
        assert float(deep.gate[0].weight.grad.abs().sum()) > 0
        opt.step()
    assert all(float(g.weight.detach().abs().sum()) > 0 for g in deep.gate)
    deep.eval()
    with torch.no_grad():
        other = {**feats, taps[0]: torch.randn(2, *LITE0[taps[0]])}  # change only the coarsest tap
        assert not torch.equal(deep(feats), deep(other))


def _checkerboard(y: torch.Tensor, periods=(2, 4, 8)) -> float:
    """How much the output's spectrum peaks at the up-sampling periods, against its neighbours.

    The grey level of the interior (padding effects cut off) minus its mean; the power at the
    frequencies 1/p along x, y and the diagonal, divided by the mean power of the 24 frequencies
    around it. No periodic pattern gives a small ratio (about 6 here); a checkerboard, hundreds.
    """
    g = y.mean(1)[:, 16:-16, 16:-16]
    g = g - g.mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(g.double()).abs().pow(2).mean(0)
    n = power.shape[-1]
    worst = 0.0
    for p in periods:
        k = n // p
        for a, b in ((k, 0), (0, k), (k, k)):
            ring = [power[(a + i) % n, (b + j) % n] for i in range(-2, 3) for j in range(-2, 3) if (i, j) != (0, 0)]
            worst = max(worst, float(power[a, b] / (torch.stack(ring).mean() + 1e-30)))
    return worst


def _flat_features(shapes, seed=1):
    """What a flat-colour image gives away from the borders: each channel a constant."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(2, c, 1, 1, generator=g).expand(2, c, h, w).contiguous() for k, (c, h, w) in shapes.items()}


def _checkerboard_scores(name, shapes, **options):
    torch.manual_seed(0)
    dec = build_decoder(name, shapes, 224, **options).train()
    f = _flat_features(shapes)
    with torch.no_grad():
        at_init = _checkerboard(dec(f))
    target = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1).expand(2, 3, 224, 224)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    for _ in range(8):  # a few steps towards a flat-colour image
        loss = (dec(f) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return at_init, _checkerboard(dec(f))


CHECKERBOARD_LIMIT = 15.0


@pytest.mark.parametrize("upsample", ["default", "lowres"])
@pytest.mark.parametrize("taps", [["stage1"], list(LITE0)], ids=["stage1", "all"])
def test_default_decoder_leaves_no_checkerboard(taps, upsample):
    from featinv.config import DecoderConfig

    dc = DecoderConfig() if upsample == "default" else DecoderConfig(upsample=upsample)
    at_init, trained = _checkerboard_scores(dc.name, {k: LITE0[k] for k in taps}, **dc.options())
    assert at_init < CHECKERBOARD_LIMIT and trained < CHECKERBOARD_LIMIT, (at_init, trained)


def test_the_checkerboard_measure_finds_convtranspose_artefacts():
    """The previous default (pyramid, ConvTranspose) fails the same test: the measure can fail."""
    at_init, trained = _checkerboard_scores("pyramid", LITE0, width=64, blocks=2, upsample="convtranspose")
    assert at_init > CHECKERBOARD_LIMIT and trained > CHECKERBOARD_LIMIT, (at_init, trained)


def test_icnr_pixelshuffle_starts_without_a_checkerboard():
    at_init, _ = _checkerboard_scores("ladder", {"stage1": LITE0["stage1"]}, upsample="pixelshuffle")
    assert at_init < CHECKERBOARD_LIMIT


@pytest.mark.parametrize("name", ["ladder", "pyramid"])
def test_raw_graph_node_names_with_dots_work(name):
    shapes = {"layer3.5.relu_2": (1024, 14, 14), "layer1.0.conv1": (64, 56, 56)}
    dec = build_decoder(name, shapes, 224, width=16).eval()
    with torch.no_grad():
        y = dec({k: torch.randn(1, *v) for k, v in shapes.items()})
    assert y.shape == (1, 3, 224, 224)


def test_lowres_up_sampling_convolves_before_it_resizes():
    """``lowres`` runs each ×2 stage's conv at the stage's input resolution (a quarter of the
    multiply-adds of ``resize``, whose conv runs at the output resolution), with the same
    parameters; both give the image size."""
    seen = {}
    decs = {kind: build_decoder("ladder", {"stage1": LITE0["stage1"]}, 224, width=16, upsample=kind).eval()
            for kind in ("resize", "lowres")}
    for kind, dec in decs.items():
        dec.up[0].conv.register_forward_hook(lambda m, i, o, kind=kind: seen.__setitem__(kind, tuple(i[0].shape[-2:])))
        with torch.no_grad():
            assert dec({"stage1": torch.randn(1, *LITE0["stage1"])}).shape == (1, 3, 224, 224)
    assert seen == {"resize": (112, 112), "lowres": (56, 56)}
    assert count_parameters(decs["resize"]) == count_parameters(decs["lowres"])


def test_ladder_refuses_convtranspose_in_one_sentence():
    from featinv.utils import FeatinvError

    with pytest.raises(FeatinvError, match="upsample must be one of resize, lowres, pixelshuffle"):
        build_decoder("ladder", LITE0, 224, upsample="convtranspose")


def test_a_decoder_json_of_the_previous_version_still_rebuilds():
    """decoder.json as featinv 0.1.0 wrote it before the ladder existed (pyramid, ConvTranspose)."""
    spec = {"name": "pyramid", "shapes": {k: list(v) for k, v in LITE0.items()}, "image_size": 224,
            "options": {"width": 64, "blocks": 2, "upsample": "convtranspose", "fusion": "add", "norm": "batch"}}
    dec = decoder_from_spec(spec)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in dec.modules()) == 2  # 56 → 112 → 224
    keys = set(dec.state_dict())
    assert {"lateral.stage1.0.weight", "refine.stage4.0.weight", "blocks.1.body.0.weight", "up.0.0.weight"} <= keys
    oldest = decoder_from_spec({**spec, "options": {"width": 128}})  # the very first pyramid's options
    assert any(isinstance(m, torch.nn.Upsample) for m in oldest.modules())


def test_an_unknown_decoder_names_the_version_that_wrote_it(tmp_path, tiny_run):
    import json
    import shutil

    from featinv.evaluate import load_run
    from featinv.utils import FeatinvError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "decoder.json").read_text())
    meta["decoder"]["name"], meta["featinv_version"] = "hourglass", "9.9.9"
    (run / "decoder.json").write_text(json.dumps(meta))
    with pytest.raises(FeatinvError, match=r"written by featinv 9\.9\.9") as e:
        load_run(run)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["ladder", "pyramid"])
@pytest.mark.parametrize("subset", [("layer1",), tuple(SHAPES)], ids=["layer1", "all"])
def test_a_smaller_crop_is_decoded_at_its_own_size_by_the_same_weights(name, subset):
    """``--train-crop``: a decoder built for 224 maps the maps of a 112 crop (layer4 4×4, as
    ResNet-50 gives) to a 112 image, and with the same weights still maps 224's maps to 224."""
    small = {"layer1": (256, 28, 28), "layer2": (512, 14, 14), "layer3": (1024, 7, 7), "layer4": (2048, 4, 4)}
    dec = build_decoder(name, {k: SHAPES[k] for k in subset}, 224, width=16).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        assert dec({k: torch.randn(2, *small[k]) for k in subset}).shape == (2, 3, 112, 112)
        assert dec(_features(subset)).shape == (2, 3, 224, 224)
