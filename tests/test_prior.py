"""The pretrained image prior (TAEF2): the architecture written in featinv loads the published
state dicts strictly and reproduces the autoencoder's own round trip."""

from pathlib import Path

import pytest
import torch

from featinv.prior import LATENT_CHANNELS, build_decoder, build_encoder, load_part
from featinv.utils import FeatinvError

PRIOR = Path(__file__).resolve().parents[2] / "shared" / "priors" / "taesd"
needs_weights = pytest.mark.skipif(not (PRIOR / "taef2_decoder.pth").is_file(), reason="../shared/priors/taesd is absent")


@needs_weights
def test_both_parts_load_the_published_state_dicts_strictly(tmp_path):
    for part, build in (("encoder", build_encoder), ("decoder", build_decoder)):
        state = torch.load(PRIOR / f"taef2_{part}.pth", weights_only=True)
        assert set(state) == set(build().state_dict())  # every key, no more
        model = load_part(part, PRIOR)
        assert all(torch.equal(model.state_dict()[k], v.float()) for k, v in state.items())
        broken = dict(state)
        broken.pop(next(k for k in state if ".pool." in k))  # the context branch is part of the architecture
        torch.save(broken, tmp_path / f"taef2_{part}.pth")
        with pytest.raises(FeatinvError, match=f"is not a TAEF2 {part}"):
            load_part(part, tmp_path)


@needs_weights
def test_the_round_trip_of_the_bundled_photos_is_the_autoencoders(samples):
    """Encoder then decoder on the 12 bundled photos: 31.0 dB / 0.899 measured (SOURCE.md: 29.7 dB on
    24 ImageNet val crops); a wrong block (no context branch: 16 dB) or a wrong norm falls far below."""
    from PIL import Image

    from featinv.data import preprocess
    from featinv.metrics import score

    x = torch.stack([preprocess(Image.open(f).convert("RGB"), 224, 256, train=False)
                     for f in sorted(samples.glob("*/*.jpg"))]).float() / 255
    with torch.no_grad():
        z = load_part("encoder", PRIOR).eval()(x)
        y = load_part("decoder", PRIOR).eval()(z).clamp(0, 1)
    assert z.shape == (12, LATENT_CHANNELS, 28, 28)
    s = score(y, x)
    assert s["psnr"].mean() > 30.0 and s["ssim"].mean() > 0.88


def test_missing_weights_say_where_to_point(tmp_path):
    with pytest.raises(FeatinvError, match="no TAEF2 decoder weights at .*taef2_decoder.pth"):
        load_part("decoder", tmp_path)


@needs_weights
def test_the_prior_decoder_trains_rebuilds_and_keeps_the_prior_out_of_its_files(samples, tmp_path):
    """decoder prior: a ladder head into TAEF2's latents, the frozen TAEF2 decoder drawing the
    image. Only the head trains and is exported; the run rebuilds from its directory with the
    prior loaded again from decoder.prior_weights, and scores what training reported."""
    from safetensors.torch import load_file

    import featinv
    from featinv.decoders import build_decoder, count_parameters
    from featinv.training import Trainer

    from conftest import tiny_config

    shapes = {"layer3": (1024, 14, 14)}
    dec = build_decoder("prior", shapes, 224, width=16, max_width=64, blocks=1, prior_weights=str(PRIOR))
    y = dec({"layer3": torch.randn(2, 1024, 14, 14)})
    assert y.shape == (2, 3, 224, 224) and 0 <= y.min() and y.max() <= 1
    assert not any(k.startswith("_prior") for k in dec.state_dict())
    two = build_decoder("prior", {"s1": (24, 56, 56), "s4": (320, 7, 7)}, 224, width=16, max_width=64, blocks=1,
                        prior_weights=str(PRIOR))
    with torch.no_grad():  # the output follows the finest map, at full size and for a 128 crop
        assert two({"s1": torch.randn(1, 24, 56, 56), "s4": torch.randn(1, 320, 7, 7)}).shape == (1, 3, 224, 224)
        assert two({"s1": torch.randn(1, 24, 32, 32), "s4": torch.randn(1, 320, 4, 4)}).shape == (1, 3, 128, 128)
    assert all(not p.requires_grad for p in dec._prior[0].parameters()) and count_parameters(dec) < 1e6

    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.data.max_images, cfg.train.num_save = 3, 0
    cfg.backbone.layers = ["layer3"]
    cfg.decoder.name, cfg.decoder.width, cfg.decoder.max_width = "prior", 16, 64
    cfg.decoder.prior_weights = str(PRIOR)
    trainer = Trainer(cfg, tmp_path / "run")
    s = trainer.fit()
    published = load_part("decoder", PRIOR).state_dict()
    trained = trainer.state.decoder._prior[0].state_dict()
    assert all(torch.equal(trained[k], v) for k, v in published.items())  # the prior never trains
    exported = load_file(tmp_path / "run" / "decoder.safetensors")
    assert exported and not any("prior" in k for k in exported)
    again = featinv.evaluate_run(featinv.load_run(tmp_path / "run", device="cpu"), out=tmp_path / "ev", num_save=0,
                                 semantic=False)
    assert again["psnr"] == pytest.approx(s["val"]["psnr"], rel=1e-5)


def test_the_prior_decoder_without_weights_is_one_sentence(tmp_path):
    from featinv.decoders import build_decoder

    with pytest.raises(FeatinvError, match="decoder.prior_weights"):
        build_decoder("prior", {"layer3": (1024, 14, 14)}, 224)
