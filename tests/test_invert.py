"""Optimisation-based inversion: the search, its guarantees, and `featinv invert`."""

from __future__ import annotations

import json

import pytest
import torch

from featinv import metrics as M
from featinv.backbones import FeatureExtractor
from featinv.cli import main
from featinv.data import ImageDataset, find_images, to_float
from featinv.invert import InvertConfig, feature_error, search, start_image


@pytest.fixture(scope="module")
def extractor():
    """EfficientNet-Lite0 with its real ImageNet weights (the offline extra, as the demo uses)."""
    return FeatureExtractor("efficientnet_lite0", "imagenet", ["stage1", "stage2"], seed=0).eval()


@pytest.fixture(scope="module")
def photos(samples):
    recs = find_images(samples / "val").records
    ds = ImageDataset(recs, image_size=64, resize=72, train=False)
    return to_float(torch.stack([ds[i]["image"] for i in range(len(recs))]), torch.device("cpu"))


def _target(extractor, x):
    with torch.no_grad():
        return extractor(x)


def test_the_objective_decreases_on_a_real_photo_and_the_box_holds_at_every_step(extractor, photos):
    x = photos[:1]
    seen = []
    cfg = InvertConfig(steps=25, lr=0.05)
    best, fe, history = search(extractor, _target(extractor, x), start_image(x, cfg, [0]), cfg,
                               on_step=lambda step, xi: seen.append((float(xi.min()), float(xi.max()))))
    assert len(seen) == 26 and all(0.0 <= lo and hi <= 1.0 for lo, hi in seen)
    assert history[-1] < 0.5 * history[0]
    start_fe = feature_error(extractor, start_image(x, cfg, [0]), _target(extractor, x))
    assert float(fe[0]) < 0.5 * float(torch.stack(list(start_fe.values())).mean())


def test_refine_never_returns_an_iterate_worse_than_its_start(extractor, photos):
    x = photos
    start = M.bicubic_thumbnail(x, 8)  # a decent start: the thumbnail of each photo
    target = _target(extractor, x)
    errors = feature_error(extractor, start, target)
    before = torch.stack(list(errors.values())).mean(0)
    for lr in (0.01, 2.0):  # a sane step and one so large every step makes things worse
        _, fe, _ = search(extractor, target, start, InvertConfig(steps=6, lr=lr, tv_weight=0.0))
        assert torch.all(fe <= before + 1e-7)


def test_the_returned_image_is_the_one_with_the_returned_error(extractor, photos):
    """The image search returns is the best iterate, not the last: its recomputed feature error is
    the error returned, and never above the start's, also when every step makes things worse."""
    x = photos
    start = M.bicubic_thumbnail(x, 8)
    target = _target(extractor, x)
    before = M.mean_over_taps(feature_error(extractor, start, target))
    for lr in (0.01, 2.0):
        best, fe, _ = search(extractor, target, start, InvertConfig(steps=6, lr=lr, tv_weight=0.0))
        again = M.mean_over_taps(feature_error(extractor, best, target))
        assert torch.allclose(again, fe, rtol=1e-4, atol=1e-7)
        assert torch.all(again <= before + 1e-7)


def test_a_batch_gives_what_its_images_give_one_by_one(extractor, photos):
    """Per-image objectives summed, per-image best iterates, per-image starts: the batch differs
    from one-by-one runs only by convolution rounding, which Adam can amplify where a gradient is
    ~0; the tolerance is on the reconstructions (PSNR between them above 45 dB)."""
    cfg = InvertConfig(steps=12, init="noise", seed=3)
    target = _target(extractor, photos)
    batched, fe_b, _ = search(extractor, target, start_image(photos, cfg, [0, 1, 2]), cfg)
    for i in range(len(photos)):
        xi = photos[i : i + 1]
        single, fe_s, _ = search(extractor, _target(extractor, xi), start_image(xi, cfg, [i]), cfg)
        assert float(M.psnr(single, batched[i : i + 1])[0]) > 45.0
        assert float(fe_s[0]) == pytest.approx(float(fe_b[i]), rel=1e-3)


def _invert_argv(samples, out, *extra):
    return ["-q", "invert", "--data", str(samples / "val"), "--out", str(out), "--backbone", "resnet50",
            "--weights", "random", "--layers", "layer1", "--steps", "3", "--device", "cpu", *extra]


def test_invert_writes_what_evaluate_writes_plus_the_feature_error_and_resumes(samples, tmp_path):
    out = tmp_path / "inv"
    assert main(_invert_argv(samples, out, "--max-images", "2")) == 0
    first = (out / "per_image.csv").read_text().splitlines()
    assert main(_invert_argv(samples, out)) == 0  # the third image only: the first two are done
    lines = (out / "per_image.csv").read_text().splitlines()
    assert lines[:3] == first and len(lines) == 4
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == 3 and {"mse", "psnr", "ssim", "feature_error", "feature_error_mean"} <= set(m)
    assert set(m["feature_error"]) == {"layer1"} and m["seconds_per_image"] > 0
    for name in ("original_0.png", "reconstruction_2.png", "comparison.png"):
        assert (out / "results" / name).is_file()


def test_refine_from_a_run_and_its_mismatches(samples, tiny_run, tmp_path, capsys):
    out = tmp_path / "ref"
    argv = ["-q", "invert", "--data", str(samples / "val"), "--out", str(out), "--method", "refine", "--run",
            str(tiny_run), "--steps", "2", "--device", "cpu", "--max-images", "1"]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "refine" and set(m["feature_error"]) == {"layer1", "layer2", "layer3", "layer4"}
    assert main([*argv[:-2], "--backbone", "efficientnet_lite0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("featinv: error:") and "--backbone resnet50" in err
    assert main(["-q", "invert", "--data", str(samples / "val"), "--out", str(out), "--method", "refine"]) == 2
    assert "--run" in capsys.readouterr().err


def test_an_unknown_method_is_refused(samples, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_invert_argv(samples, tmp_path / "x", "--method", "dream"))
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_evaluate_reports_the_feature_error_of_a_decoder(tiny_run, tmp_path):
    import featinv

    import csv

    from featinv.data import ImageDataset

    run = featinv.load_run(tiny_run, device="cpu")
    m = featinv.evaluate_run(run, out=tmp_path / "ev", num_save=0)
    assert m["feature_error"] > 0
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_image.csv")))
    # by hand, per image: ||phi(x^) - phi(x)||^2 / ||phi(x)||^2 at each tap, averaged over the taps
    records = featinv.data.find_images(run.config.data.val_data).records
    x = torch.stack([ImageDataset(records, train=False)[(i, 0)]["image"] for i in range(len(records))]).float() / 255
    with torch.no_grad():
        f, g = run.extractor(x), run.extractor(run.reconstruct(x).float())
    by_hand = {r.relpath: sum(float(((g[k][i] - f[k][i]) ** 2).sum() / (f[k][i] ** 2).sum()) for k in f) / len(f)
               for i, r in enumerate(records)}
    assert {r["file"]: float(r["feature_error"]) for r in rows} == pytest.approx(by_hand, rel=1e-4)
    assert m["feature_error"] == pytest.approx(sum(by_hand.values()) / len(by_hand), rel=1e-4)
    cosine = {r.relpath: sum(float(torch.nn.functional.cosine_similarity(g[k][i].flatten(), f[k][i].flatten(), dim=0))
                             for k in f) / len(f) for i, r in enumerate(records)}
    assert {r["file"]: float(r["feature_cosine"]) for r in rows} == pytest.approx(cosine, rel=1e-4)


def test_resuming_with_other_settings_is_refused(samples, tmp_path, capsys):
    """Rows searched with other settings must not be mixed into one folder's table."""
    out = tmp_path / "inv"
    assert main(_invert_argv(samples, out, "--max-images", "1")) == 0
    before = (out / "per_image.csv").read_text()
    argv = _invert_argv(samples, out)
    steps = argv.index("--steps")
    argv[steps + 1] = str(int(argv[steps + 1]) + 1)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("featinv: error:") and "other steps" in err
    assert (out / "per_image.csv").read_text() == before
