"""Run directories written by earlier featinv versions still load, evaluate and resume."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import featinv
from featinv.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"


@pytest.fixture()
def old_run(tmp_path, samples):
    """The 0.1.0 fixture (3 train, 2 val photos of the bundled set, 64 px) pointed at a copy of its photos."""
    for split, k in (("train", 3), ("val", 2)):
        (tmp_path / "data" / split).mkdir(parents=True)
        for p in sorted((samples / split).rglob("*.jpg"))[:k]:
            shutil.copy(p, tmp_path / "data" / split / p.name)
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["data"], cfg["data"]["val_data"] = str(tmp_path / "data" / "train"), str(tmp_path / "data" / "val")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return run


def test_a_0_1_0_run_loads_and_evaluates_to_its_saved_numbers(old_run):
    saved = json.loads((old_run / "summary.json").read_text())["val"]
    again = featinv.evaluate_run(featinv.load_run(old_run, device="cpu"), out=old_run / "recheck")
    for k in ("mse", "psnr", "ssim"):
        assert again[k] == pytest.approx(saved[k], rel=1e-5, abs=1e-6)


def test_a_0_1_0_run_resumes_for_one_more_epoch(old_run):
    before = list(csv.DictReader(open(old_run / "metrics.csv")))
    assert main(["-q", "train", "--out", str(old_run), "--resume", "--epochs", "3"]) == 0
    rows = list(csv.DictReader(open(old_run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[:2] == before  # the earlier session's rows are kept as they were
    assert json.loads((old_run / "summary.json").read_text())["epochs_run"] == 3


def test_files_written_now_carry_their_format(old_run):
    assert main(["-q", "train", "--out", str(old_run), "--resume", "--epochs", "3"]) == 0
    cfg = yaml.safe_load((old_run / "config.yaml").read_text())
    assert cfg["format"] == 5
    assert cfg["data"]["train_crop"] == 0  # as 0.1.0 trained it: crops of the full size, not the new default
    assert json.loads((old_run / "decoder.json").read_text())["format"] == 2
    assert torch.load(old_run / "checkpoints" / "last.pt", weights_only=True)["format"] == 2


@pytest.mark.parametrize("which", ["config", "decoder", "checkpoint"])
def test_a_newer_format_is_refused_in_one_sentence_naming_it(old_run, capsys, which):
    if which == "config":
        cfg = yaml.safe_load((old_run / "config.yaml").read_text())
        (old_run / "config.yaml").write_text(yaml.safe_dump({"format": 99, **cfg}, sort_keys=False))
        argv = ["evaluate", str(old_run)]
    elif which == "decoder":
        meta = json.loads((old_run / "decoder.json").read_text())
        (old_run / "decoder.json").write_text(json.dumps({**meta, "format": 99}))
        argv = ["evaluate", str(old_run)]
    else:
        for name in ("last.pt", "previous.pt"):
            path = old_run / "checkpoints" / name
            if path.is_file():
                torch.save({**torch.load(path, weights_only=True), "format": 99}, path)
        argv = ["train", "--out", str(old_run), "--resume", "--epochs", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("featinv: error:") and "format 99" in err[-1] and "newer featinv" in err[-1]
    assert not any("Traceback" in line for line in err)
