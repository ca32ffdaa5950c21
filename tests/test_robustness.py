"""Bad inputs, interruptions and untrusted files never cost a user their work."""

import csv
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featinv.decoders as decoders_module
import featinv.losses as losses_module
import featinv.utils as utils_module
from featinv.cli import main
from featinv.utils import FeatinvError, atomic_torch_save, atomic_write_text

from conftest import assert_same_run, read_rows, resume_counting_steps, tiny_config


def _photo(seed: int, size=(300, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ── bad images ──────────────────────────────────────────────────────────────────────────────

BAD = {  # file → words its reason must contain
    "zero_byte.jpg": "not an image",
    "truncated.jpg": "",
    "text.jpg": "not an image",
    "page.png": "not an image",
    "bomb.png": "decompression-bomb",
    "broken_link.jpg": "broken link",
    "locked.png": "permission denied",
}
GOOD = [
    "alpha.png", "sixteen_bit.png", "cmyk.jpg", "palette.gif", "animated.gif", "rotated.jpg",
    "one_pixel.png", "naïve café.jpg", "o'brien's photo.png", "plain0.jpg", "plain1.jpg", "plain2.jpg",
]


@pytest.fixture()
def bad_corpus(tmp_path, monkeypatch, samples):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "zero_byte.jpg").write_bytes(b"")
    good_jpeg = (samples / "val" / "coffee.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    (root / "text.jpg").write_text("just some text")
    (root / "page.png").write_text("<!doctype html><html><body>404</body></html>")
    _photo(1, (600, 600)).save(root / "bomb.png")
    (root / "broken_link.jpg").symlink_to(root / "does_not_exist.jpg")
    _photo(2).save(root / "locked.png")
    os.chmod(root / "locked.png", 0)

    rgba = _photo(3).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "alpha.png")
    Image.fromarray((np.asarray(_photo(4).convert("L"), dtype=np.uint16) * 257)).save(root / "sixteen_bit.png")
    _photo(5).convert("CMYK").save(root / "cmyk.jpg")
    _photo(6).convert("P").save(root / "palette.gif")
    frames = [_photo(7 + i).convert("P") for i in range(3)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(10).save(root / "rotated.jpg", exif=exif)
    _photo(11, (1, 1)).save(root / "one_pixel.png")
    _photo(12).save(root / "naïve café.jpg")
    _photo(13).save(root / "o'brien's photo.png")
    for i in range(3):
        _photo(20 + i).save(root / f"plain{i}.jpg")

    # A decompression bomb without a huge file: lower Pillow's limit below that image's size.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # the others have at most 98,304 pixels
    if os.geteuid() == 0:
        # root reads any file whatever its mode, so refuse this one the way the OS would.
        real_open = Image.open

        def open_as_user(fp, *a, **k):
            if str(fp).endswith("locked.png"):
                raise PermissionError(errno.EACCES, "Permission denied", str(fp))
            return real_open(fp, *a, **k)

        monkeypatch.setattr(Image, "open", open_as_user)
    return root


def test_bad_images_are_skipped_once_each_and_listed(bad_corpus, tmp_path, caplog):
    out = tmp_path / "run"
    argv = ["train", "--data", str(bad_corpus), "--val-fraction", "0.25", "--out", str(out), "--weights", "random",
            "--layers", "layer1", "--width", "8", "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--device", "cpu", "--num-save", "1"]
    with caplog.at_level("WARNING", logger="featinv"):
        assert main(argv) == 0
    err = "\n".join(r.getMessage() for r in caplog.records)
    with open(out / "skipped.csv", newline="") as f:
        skipped = {r["file"]: r["reason"] for r in csv.DictReader(f)}
    assert set(skipped) == set(BAD)
    for name, words in BAD.items():
        assert words in skipped[name], (name, skipped[name])
        assert err.count(f"skipping {name}:") == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped_files"] == len(BAD)
    assert s["train_images"] + s["val_images"] == len(GOOD)
    assert f"{len(BAD)} file(s) skipped" in err


def test_strict_turns_a_skip_into_an_error(bad_corpus, tmp_path, capsys):
    argv = ["train", "--data", str(bad_corpus), "--out", str(tmp_path / "run"), "--weights", "random",
            "--epochs", "1", "--strict"]
    assert main(argv) == 2
    assert "--strict" in capsys.readouterr().err


def test_folder_without_usable_images_exits_2(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_text("not an image")
    (tmp_path / "bad" / "b.png").write_bytes(b"")
    assert main(["train", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "r"), "--weights", "random"]) == 2
    assert "no usable training images" in capsys.readouterr().err
    assert not (tmp_path / "r" / "summary.json").exists()


# ── interruptions ───────────────────────────────────────────────────────────────────────────


def _cli_argv(samples: Path, out: Path) -> list[str]:
    """The command-line twin of `conftest.tiny_config` (the session's `tiny_run`), with a
    checkpoint after every step."""
    return ["train", "--data", str(samples / "train"), "--val-data", str(samples / "val"), "--out", str(out),
            "--weights", "random", "--decoder", "pyramid", "--width", "32", "--epochs", "2", "--batch-size", "3", "--lr", "3e-3",
            "--seed", "0", "--device", "cpu", "--workers", "0", "--num-save", "3", "--checkpoint-every", "1",
            "--precision", "fp32"]


def _start_and_wait_for_checkpoint(samples: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "featinv.cli", *_cli_argv(samples, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.pt").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)
    return proc


STEPS = 2 * 3  # the tiny run: 2 epochs of 3 batches


def _resume_and_compare(out: Path, tiny_run: Path) -> None:
    """Resume ``out``: exactly the steps its checkpoint lacks are run, the earlier session's
    metrics rows stay as they were, and the run ends as the uninterrupted ``tiny_run``."""
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    before = [r for r in read_rows(out) if int(r["epoch"]) <= ckpt["epoch"]]  # the epochs the checkpoint vouches for
    _, steps = resume_counting_steps(out)
    assert steps == STEPS - (3 * ckpt["epoch"] + ckpt["step"])
    rows = read_rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # appended, never duplicated
    assert rows[: len(before)] == before
    assert_same_run(out, tiny_run)


def test_sigkill_loses_only_steps_since_the_last_checkpoint(samples, tmp_path, tiny_run):
    out = tmp_path / "killed"
    proc = _start_and_wait_for_checkpoint(samples, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()  # it really died mid-training
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] * 3 + ckpt["step"] >= 1
    _resume_and_compare(out, tiny_run)


def test_sigint_saves_a_checkpoint_and_exits_cleanly(samples, tmp_path, tiny_run):
    out = tmp_path / "interrupted"
    proc = _start_and_wait_for_checkpoint(samples, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    _resume_and_compare(out, tiny_run)


def test_mid_epoch_resume_replays_the_same_batches(samples, tmp_path, tiny_run):
    """In-process: stop in the middle of epoch 2, resume, and end with the same weights."""
    import featinv.training as train_module

    out = tmp_path / "mid"
    cfg = tiny_config(samples / "train", samples / "val")
    cfg.train.checkpoint_every = 1
    class StopInEpochTwo(train_module.StopSignals):
        """The loop reads `signal` after every step and at each epoch's end: read 5 is after
        step 1 of epoch 2."""

        calls = 0

        @property
        def signal(self):
            StopInEpochTwo.calls += 1
            if StopInEpochTwo.calls == 5:
                time.sleep(4.0)  # a slow first part of epoch 2: its time must count after the resume
                return "SIGTERM"
            return None

        @signal.setter
        def signal(self, value):
            pass

    with pytest.raises(train_module.TrainingInterrupted) as e:
        train_module.Trainer(cfg, out, signals=StopInEpochTwo()).fit()
    assert e.value.exit_code == 128 + signal.SIGTERM
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 1)  # 3 steps of epoch 1, then 1 of epoch 2
    assert ckpt["epoch_s"] >= 4.0
    _resume_and_compare(out, tiny_run)
    # the resumed epoch's row counts its whole time, not only the tail after the resume
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(rows[1]["epoch_time_s"]) >= 4.0
    assert float(rows[1]["train_images_per_s"]) <= 9 / 4.0


# ── atomic files ────────────────────────────────────────────────────────────────────────────


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, target)

    def crash_mid_write(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpo")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(RuntimeError):
        atomic_torch_save({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_disk_full_is_a_clear_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "previous")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils_module.os, "fsync", full)
    with pytest.raises(FeatinvError, match="disk is full"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "previous"


# ── numerical and resource faults ───────────────────────────────────────────────────────────


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(samples, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    cfg = tiny_config(samples / "train", samples / "val")
    cfg.train.checkpoint_every = 1
    real = losses_module.ReconstructionLoss.forward
    calls = {"n": 0}

    def nan_on_fifth_step(self, pred, target):
        parts = real(self, pred, target)
        calls["n"] += 1
        if calls["n"] == 5:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(losses_module.ReconstructionLoss, "forward", nan_on_fifth_step)
    from featinv.training import train

    with pytest.raises(FeatinvError, match=r"epoch 2, step 2"):
        train(cfg, out)
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed" and "nan" in s["error"].lower()
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 1)
    assert all(torch.isfinite(v).all() for v in ckpt["decoder"].values() if v.is_floating_point())


def test_out_of_memory_suggests_a_smaller_batch(samples, tmp_path, monkeypatch, capsys):
    def oom(self, features):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(decoders_module.LadderDecoder, "forward", oom)  # the default decoder
    argv = ["train", "--data", str(samples / "train"), "--val-data", str(samples / "val"), "--out",
            str(tmp_path / "r"), "--weights", "random", "--epochs", "1", "--batch-size", "8", "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "out of GPU memory" in err and "--batch-size 4" in err and "Traceback" not in err


# ── untrusted and mismatched files ──────────────────────────────────────────────────────────


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/featinv-pwned",))


def test_a_malicious_checkpoint_is_refused_on_resume(samples, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["-q", *_cli_argv(samples, out)[:-2], "--epochs", "1", "--max-images", "3"]) == 0
    with open(out / "checkpoints" / "last.pt", "wb") as f:
        pickle.dump({"epoch": _Evil()}, f, protocol=2)
    assert main(["-q", "train", "--out", str(out), "--resume", "--epochs", "2"]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert not Path("/tmp/featinv-pwned").exists()


def test_a_run_for_another_layer_set_says_which(tiny_run, tmp_path, capsys):
    import shutil

    import yaml

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["backbone"]["layers"] = ["layer2"]
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "layer1" in err and "layer2" in err and "Traceback" not in err


def test_resume_with_different_settings_is_refused(tiny_run, capsys):
    import featinv.config as config_module

    saved = config_module.load_config(tiny_run / "config.yaml")
    saved.backbone.layers = ["layer2"]
    from featinv.training import check_output_dir

    with pytest.raises(FeatinvError, match="backbone.layers"):
        check_output_dir(tiny_run, saved, resume=True)


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(samples, tmp_path, capsys, caplog):
    out = tmp_path / "r"
    argv = [*_cli_argv(samples, out)[:-2], "--epochs", "2", "--max-images", "6", "--checkpoint-every", "1"]
    assert main(["-q", *argv]) == 0
    last = out / "checkpoints" / "last.pt"
    assert (out / "checkpoints" / "previous.pt").is_file()
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    code = main(["train", "--out", str(out), "--resume"])  # previous.pt: mid-epoch 2, one step before the end
    err = capsys.readouterr().err + caplog.text
    assert code == 0, err
    assert "last.pt" in err and "resuming from" in err and "previous.pt" in err and "Traceback" not in err
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # epoch 2 finished again, every epoch once
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


# ── one process per run directory ───────────────────────────────────────────────────────────


def test_a_second_process_on_the_same_run_is_refused_until_the_first_is_gone(samples, tmp_path, capsys):
    out = tmp_path / "busy"
    first = _start_and_wait_for_checkpoint(samples, out)
    try:
        lock = json.loads((out / ".lock").read_text())
        assert lock["pid"] == first.pid and lock["host"]
        # this test's own process is the second one (another PID on the same host)
        assert main(["train", "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"another featinv process (PID {first.pid}" in err and "Traceback" not in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the holder is dead: its lock is stale, and the run resumes and finishes
    assert main(["-q", "train", "--out", str(out), "--resume"]) == 0
    assert not (out / ".lock").exists()  # released at the end


def test_a_lock_from_another_host_is_reported_and_can_be_broken(samples, tmp_path, capsys):
    out = tmp_path / "remote"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"host": "node-17", "pid": 4242, "start": "1", "time": time.time() - 7200}))
    argv = [*_cli_argv(samples, out)[:-2], "--epochs", "1", "--max-images", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "host node-17" in err and "PID 4242" in err and "2.0 h ago" in err and "--break-lock" in err
    assert main(["-q", *argv, "--break-lock"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
