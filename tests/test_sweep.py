"""The depth study: a tiny sweep writes every output, consistently, and resumes by skipping."""

import csv
import json

import pytest
import torch

import featinv.sweep as sweep_module
from featinv.backbones import Classifier
from featinv.cli import main
from featinv.evaluate import agreement, load_run, semantic_agreement
from featinv.data import ImageDataset, find_images

SWEEP_FILES = ["sweep.json", "summary.csv", "summary.md", "summary.json", "report.html",
               "figures/metrics_vs_depth.png", "figures/learning_curves.png", "figures/grid.png", "figures/error_maps.png"]


def test_sweep_writes_every_file_with_the_runs_numbers(tiny_sweep):
    out, _ = tiny_sweep
    for name in SWEEP_FILES:
        assert (out / name).is_file(), name
    rows = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in rows] == ["resnet50-random-layer1", "resnet50-random-layer3"]
    assert [r["stride"] for r in rows] == [4, 16]
    for r in rows:
        s = json.loads((out / "runs" / r["name"] / "summary.json").read_text())
        for k in ("mse", "psnr", "ssim"):
            assert r[k] == s["val"][k]
        assert r["ref_mean_image_psnr"] == s["reference"]["mean_image"]["psnr"]
        assert r["ref_bicubic_psnr"] == s["reference"][f"bicubic_x{r['stride']}"]["psnr"]
        assert r["parameters"] == s["decoder_parameters"] and r["train_time_s"] == s["train_time_s"]
        assert r["psnr_std"] > 0 and r["top1_agreement"] is None  # random weights: no semantics
        # each row says whether its decoder converged, how long it trained, and how it does on training photos
        assert r["converged"] == s["converged"] and r["converged"] is not None  # the sweep runs the plateau rule
        assert r["epochs"] == s["epochs_run"] == 1 and r["stop_reason"] == s["stop_reason"]
        assert r["train_minutes"] == round(s["train_pass_s"] / 60, 2) and r["images_per_s"] > 0
        assert r["train_psnr"] == s["train_eval"]["psnr"]
    table = list(csv.DictReader(open(out / "summary.csv")))
    assert [float(t["psnr"]) for t in table] == [r["psnr"] for r in rows]
    md = (out / "summary.md").read_text()
    assert f"{rows[0]['psnr']:.2f} ± {rows[0]['psnr_std']:.2f}" in md
    # each row's thumbnail line is at its own stride, in the table and the report
    lines = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("| resnet50")}
    assert "x4:" in lines["stage1"] and "x16:" in lines["stage3"] and "x4:" not in lines["stage3"]
    html = (out / "report.html").read_text()
    assert "bicubic x16 thumbnail" in html and "bicubic x4 thumbnail" in html


def test_running_the_sweep_again_skips_finished_configurations(tiny_sweep, monkeypatch):
    out, argv = tiny_sweep
    before = (out / "summary.json").read_text()

    def no_training(*a, **k):
        raise AssertionError("a finished configuration was trained again")

    monkeypatch.setattr(sweep_module, "train", no_training)
    assert main(argv) == 0
    assert (out / "summary.json").read_text() == before


def test_report_command_rebuilds_the_page_from_runs(tiny_sweep, tmp_path):
    out, _ = tiny_sweep
    page = tmp_path / "r.html"
    assert main(["-q", "report", str(out / "runs" / "resnet50-random-layer1"), str(out), "--out", str(page)]) == 0
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 4 + 3 * 2  # the figures, then each run's loss curve and best/worst
    assert text.count("<tr><td>resnet50 (random)</td>") == 3  # one run, then the sweep's two


def test_agreement_is_one_for_identical_predictions():
    logits = torch.randn(6, 1000)
    a1, a5 = agreement(logits, logits.clone())
    assert a1.all() and a5.all()
    shuffled = logits[torch.tensor([1, 2, 3, 4, 5, 0])]
    assert not agreement(logits, shuffled)[0].all()


def test_top5_agreement_counts_the_originals_class_anywhere_in_the_top_five():
    """Hand-built logits: the original's class ranked 1st, 3rd, 5th and 6th by the reconstruction."""
    original = torch.zeros(4, 10)
    original[:, 7] = 1.0  # every original is class 7
    recon = torch.arange(10, dtype=torch.float32).repeat(4, 1)  # ranks 9, 8, 7, ... first
    recon[0, 7], recon[1, 7], recon[2, 7], recon[3, 7] = 20.0, 7.5, 4.5, 3.5
    a1, a5 = agreement(original, recon)
    assert a1.tolist() == [True, False, False, False]
    assert a5.tolist() == [True, True, True, False]


def test_semantic_agreement_perfect_reconstructions_and_gray_ones(tiny_run, samples):
    """With a real (offline, pretrained) classifier: reconstructions equal to the originals agree
    fully; flat gray 'reconstructions' cannot agree on three different photos."""
    run = load_run(tiny_run, device="cpu")
    records = find_images(samples / "val").records
    clf = Classifier("efficientnet_lite0", "imagenet")
    run.reconstruct = lambda x: x
    perfect = semantic_agreement(run, clf, records, num_workers=0)
    assert perfect["top1_agreement"] == 1.0 and perfect["top5_agreement"] == 1.0
    run.reconstruct = lambda x: torch.full_like(x, 0.5)
    gray = semantic_agreement(run, clf, records, num_workers=0)
    assert gray["top1_agreement"] < 1.0


def test_agreement_is_with_the_originals_prediction_not_its_label(tiny_run, samples):
    """Each photo labelled with a class its classifier does not predict: perfect reconstructions
    still agree fully (agreement compares with the original's prediction), and the per-image
    values follow from the two predictions computed here by hand."""
    import dataclasses

    run = load_run(tiny_run, device="cpu")
    records = find_images(samples / "val").records
    clf = Classifier("efficientnet_lite0", "imagenet").eval()
    x = torch.stack([ImageDataset(records, train=False)[(i, 0)]["image"] for i in range(len(records))]).float() / 255
    with torch.no_grad():
        predicted = clf(x).argmax(1)
        shifted = torch.roll(x, shifts=112, dims=3)  # a reconstruction that misplaces half the photo
        expected = (clf(shifted).argmax(1) == predicted).float().mean().item()
    wrong = [dataclasses.replace(r, label=(int(p) + 1) % 1000) for r, p in zip(records, predicted)]
    run.reconstruct = lambda im: im
    assert semantic_agreement(run, clf, wrong, num_workers=0)["top1_agreement"] == 1.0
    run.reconstruct = lambda im: torch.roll(im, shifts=112, dims=3)
    assert semantic_agreement(run, clf, wrong, num_workers=0)["top1_agreement"] == pytest.approx(expected)


def test_classifier_applies_its_backbones_own_normalization():
    clf = Classifier("efficientnet_lite0", "imagenet")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(clf(x), clf.model((x - 0.5) / 0.5))


def test_a_bad_layer_name_fails_before_any_training(samples, tmp_path, monkeypatch, capsys):
    def no_training(*a, **k):
        raise AssertionError("trained before checking the layer names")

    monkeypatch.setattr(sweep_module, "train", no_training)
    argv = ["sweep", "--data", str(samples / "train"), "--out", str(tmp_path / "s"), "--weights", "random",
            "--layer-sets", "layer1", "layer2+layer9"]
    assert main(argv) == 2
    assert "unknown layer 'layer9'" in capsys.readouterr().err


def test_report_refuses_runs_scored_on_different_images(tiny_sweep, tiny_run, tmp_path):
    from featinv.utils import FeatinvError
    from featinv.report import build_report

    out, _ = tiny_sweep
    # tiny_run saved three validation pairs; the sweep's runs two, of the same photos in the same
    # order, so their shared pairs agree. Swap one of tiny_run's originals for another photo.
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    shutil.copy(other / "results" / "original_1.png", other / "results" / "original_0.png")
    with pytest.raises(FeatinvError, match="different held-out images"):
        build_report([out / "runs" / "resnet50-random-layer1", other], tmp_path / "r.html")
    build_report([out / "runs" / "resnet50-random-layer1", tiny_run], tmp_path / "ok.html")


def test_a_finished_run_with_other_settings_is_not_reused(tiny_sweep, capsys):
    out, argv = tiny_sweep
    changed = [a if a != "1" or argv[i - 1] != "--epochs" else "2" for i, a in enumerate(argv)]
    assert changed != argv
    plan = (out / "sweep.json").read_text()
    assert main(changed) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert (out / "sweep.json").read_text() == plan  # refused before writing anything


@pytest.mark.parametrize("flag, value, key", [("--width", "24", "decoder.width"), ("--decoder", "pyramid", "decoder.name"),
                                             ("--loss", "l1=1", "loss.l1")])
def test_a_finished_run_trained_with_another_decoder_or_loss_is_not_reused(tiny_sweep, capsys, flag, value, key):
    """Not only the data and training settings: a finished run whose decoder or loss differs from
    what the sweep asks for is refused, naming the setting, before anything is written."""
    out, argv = tiny_sweep
    changed = [*argv, flag, value]
    plan = (out / "sweep.json").read_text()
    assert main(changed) == 2
    assert key in capsys.readouterr().err
    assert (out / "sweep.json").read_text() == plan


def test_a_sweep_with_three_methods_writes_every_row_and_figure(samples, tmp_path, capsys):
    """The inversion method is a dimension of the study: a row per (layers, method) on the same
    held-out images, with the decoder's reference lines, feature error, s/image and agreement."""
    out = tmp_path / "m"
    argv = ["-q", "sweep", "--data", str(samples / "train"), "--val-data", str(samples / "val"), "--out", str(out),
            "--models", "efficientnet_lite0:imagenet", "--layer-sets", "stage1", "--epochs", "1",
            "--batch-size", "3", "--max-images", "3", "--width", "16", "--num-save", "2", "--workers", "0",
            "--device", "cpu", "--methods", "decoder", "optimize", "refine", "--invert-steps", "3"]
    assert main(argv) == 0
    for name in SWEEP_FILES:
        assert (out / name).is_file(), name
    rows = json.loads((out / "summary.json").read_text())
    names = ["efficientnet_lite0-imagenet-stage1", "efficientnet_lite0-imagenet-stage1-optimize",
             "efficientnet_lite0-imagenet-stage1-refine"]
    assert [r["name"] for r in rows] == names and [r["method"] for r in rows] == ["decoder", "optimize", "refine"]
    decoder = rows[0]
    for r in rows[1:]:
        m = json.loads((out / "runs" / r["name"] / "metrics.json").read_text())
        assert (r["psnr"], r["feature_error"], r["seconds_per_image"]) == (m["psnr"], m["feature_error_mean"],
                                                                          m["seconds_per_image"])
        assert m["n_images"] == decoder["n_images"] == 3 and m["settings"]["steps"] == 3
        assert r["ref_bicubic_psnr"] == decoder["ref_bicubic_psnr"] and r["stride"] == decoder["stride"] == 4
        assert r["epochs"] is None and r["top1_agreement"] is not None
    assert decoder["feature_error"] > 0 and decoder["seconds_per_image"] > 0 and decoder["top1_agreement"] is not None
    md = (out / "summary.md").read_text()
    assert "| method | feature error | s/image |" in md and "| refine |" in md
    page = (out / "report.html").read_text()
    assert "refine (optimisation on the pixels)" in page and page.count("<tr><td>efficientnet_lite0") == 3
    # the same images: the grid's check that every column saw the same originals passed, and
    assert (out / "runs" / names[2] / "results" / "original_1.png").read_bytes() == \
        (out / "runs" / names[0] / "results" / "original_1.png").read_bytes()
    assert main([*argv[:-4], "--methods", "decoder", "dream"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("featinv: error: --methods takes decoder, optimize, refine")


def test_a_sweep_of_a_missing_folder_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--data", str(tmp_path / "nope"), "--out", str(out), "--weights", "random"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "sweep 1/" not in err
    assert not out.exists()
