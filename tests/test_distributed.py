"""Data-parallel training under torchrun: 2 CPU processes (gloo), tiny images, a timeout per test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import read_rows
from featinv.cli import main

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

TIMEOUT = 240


def _env() -> dict[str, str]:
    # one thread per process (two processes share this machine's cores); a dead peer ends a collective soon
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "FEATINV_DIST_TIMEOUT": "60"}


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _train_args(samples: Path, out: Path, batch: int, epochs: int = 2, *extra: str) -> list[str]:
    """A decoder without batch norm (``--norm none``), fp32, 64-pixel crops of 8 bundled photos."""
    return ["train", "--data", str(samples / "train"), "--val-data", str(samples / "val"), "--out", str(out),
            "--weights", "random", "--layers", "layer1", "--width", "16", "--max-width", "16", "--blocks", "0",
            "--norm", "none", "--epochs", str(epochs), "--batch-size", str(batch), "--max-images", "8",
            "--set", "data.image_size=64", "--precision", "fp32", "--device", "cpu", "--workers", "0",
            "--num-save", "2", "--schedule", "constant", *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=TIMEOUT)


def test_two_processes_end_as_one_with_the_same_global_batch(samples, tmp_path):
    """2 ranks × batch 2 and 1 process × batch 4 see the same 4 images at every step: the same
    computation up to the order of the gradient sum, so the weights agree to float32 rounding
    (tolerance 1e-5 absolute; measured ~2e-7 on weights of magnitude ~0.1)."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["-q", *_train_args(samples, one, batch=4)]) == 0  # the single process: this one
    r2 = _run(_torchrun(2, "-m", "featinv", *_train_args(samples, two, batch=2)))
    assert r2.returncode == 0, r2.stderr
    a, b = load_file(str(one / "decoder.safetensors")), load_file(str(two / "decoder.safetensors"))
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in b)  # the unwrapped decoder
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    rows = read_rows(two)
    assert [r["epoch"] for r in rows] == ["1", "2"]  # one row per epoch, written once
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    # 3 val photos over 2 ranks: each scored exactly once
    assert s2["val_images"] == 3 and len(read_rows_csv(two / "results" / "per_image.csv")) == 3
    assert s2["val"]["psnr"] == pytest.approx(s1["val"]["psnr"], abs=1e-4)
    assert s2["train_eval"]["n_images"] == 3
    # the reference lines per image, not per shard (shards of 2 and 1 photos weigh them differently)
    assert s2["reference"].keys() == s1["reference"].keys()
    for line, scores in s1["reference"].items():
        for k, v in scores.items():
            assert s2["reference"][line][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (line, k)
    assert "[rank 1]" not in r2.stderr.replace("[rank 1] featinv", "")  # rank 1 says nothing unless something is wrong


STOP_AT_STEP = """
import sys
import featinv.training as T
real = T.Trainer.train_step
def train_step(self, x, index, step):
    parts = real(self, x, index, step)
    if step == int(sys.argv[1]):  # both ranks ask to stop after this global step, as a signal would
        self.signals.signal = "SIGINT"
    return parts
T.Trainer.train_step = train_step
from featinv.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_run_stopped_mid_epoch_resumes_with_the_right_batches(samples, tmp_path):
    """Two ranks stopped after the first of epoch 2's two steps, then resumed: the run ends with the
    uninterrupted two-rank run's weights (the resume position counts the batches of both ranks)."""
    script = tmp_path / "stop_at_step.py"
    script.write_text(STOP_AT_STEP)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = _run(_torchrun(2, "-m", "featinv", *_train_args(samples, whole, 2, 3)))
    assert r.returncode == 0, r.stderr
    r = _run(_torchrun(2, str(script), "2", *_train_args(samples, cut, 2, 3)))  # steps 0, 1: epoch 1; 2: epoch 2
    assert r.returncode != 0 and "checkpoint saved" in r.stderr
    ckpt = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 1)  # mid-epoch
    r = _run(_torchrun(2, "-m", "featinv", "train", "--out", str(cut), "--resume"))
    assert r.returncode == 0, r.stderr
    a, b = load_file(str(whole / "decoder.safetensors")), load_file(str(cut / "decoder.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def read_rows_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_feature_cache_is_shared_by_the_ranks(samples, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ("--no-augment", "--cache-features")
    assert main(["-q", *_train_args(samples, one, 4, 3, *extra)]) == 0
    r2 = _run(_torchrun(2, "-m", "featinv", *_train_args(samples, two, 2, 3, *extra)))
    assert r2.returncode == 0, r2.stderr
    ckpt = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    assert bool(ckpt["feature_filled"].all())  # rows written by either rank, agreed by both
    a, b = load_file(str(one / "decoder.safetensors")), load_file(str(two / "decoder.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def _start(cmd: list[str], out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not (out / "checkpoints" / "last.pt").is_file() or len(read_rows(out)) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    return proc


def _resume_to_the_end(out: Path, epochs: int) -> None:
    r = _run(_torchrun(2, "-m", "featinv", "train", "--out", str(out), "--resume"))
    assert r.returncode == 0, r.stderr
    assert [int(x["epoch"]) for x in read_rows(out)] == list(range(1, epochs + 1))  # every epoch once
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_sigterm_to_the_launcher_checkpoints_and_the_run_resumes(samples, tmp_path):
    out = tmp_path / "run"
    proc = _start(_torchrun(2, "-m", "featinv", *_train_args(samples, out, 2, 30, "--checkpoint-every", "1")), out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "stopped by SIGTERM" in err and "checkpoint saved" in err
    assert not (out / "summary.json").exists()
    _resume_to_the_end(out, 30)


def test_a_killed_worker_then_resume_finishes_every_epoch_once(samples, tmp_path):
    out = tmp_path / "run"
    proc = _start(_torchrun(2, "-m", "featinv", *_train_args(samples, out, 2, 30, "--checkpoint-every", "1")), out)
    workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "featinv"], capture_output=True, text=True).stdout.split()
    assert workers, "no worker processes found"
    os.kill(int(workers[-1]), signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)  # the launcher ends the other worker and fails
    assert proc.returncode != 0
    _resume_to_the_end(out, 30)


NAN_ON_RANK_1 = """
import os, sys
import featinv.losses as losses
real = losses.ReconstructionLoss.forward
calls = {"n": 0}
def forward(self, pred, target):
    parts = real(self, pred, target)
    calls["n"] += 1
    if os.environ["RANK"] == "1" and calls["n"] == 3:
        parts["loss"] = parts["loss"] * float("nan")
    return parts
losses.ReconstructionLoss.forward = forward
from featinv.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_non_finite_loss_on_one_rank_stops_every_rank(samples, tmp_path):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    out = tmp_path / "run"
    r = _run(_torchrun(2, str(script), *_train_args(samples, out, 2, 3)))
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("featinv: error:")]
    assert len(errors) == 2 and all("the loss became nan at epoch 2, step 1" in e for e in errors)  # both ranks, one line each
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed" and "nan" in s["error"]
    # the workers end with that line; the only traceback is torchrun's own report of failed workers
    assert "featinv/train.py" not in r.stderr and "featinv/cli.py" not in r.stderr


def test_a_sweep_runs_each_configuration_over_both_ranks(samples, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--data", str(samples / "train"), "--val-data", str(samples / "val"), "--out", str(out),
            "--weights", "random", "--layer-sets", "layer1", "layer2", "--epochs", "1", "--batch-size", "2",
            "--max-images", "4", "--width", "16", "--max-width", "16", "--blocks", "0", "--num-save", "2",
            "--set", "data.image_size=64", "--precision", "fp32", "--device", "cpu", "--workers", "0"]
    r = _run(_torchrun(2, "-m", "featinv", *args))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("tables, figures and report.html") == 1  # rank 0 reports, once
    rows = json.loads((out / "summary.json").read_text())
    assert [row["layer_set"] for row in rows] == ["stage1", "stage2"] and all(row["n_images"] == 3 for row in rows)
    assert (out / "report.html").is_file()
