"""`--log tensorboard`: one scalar per epoch and tag, read back with TensorBoard's own event reader;
a resumed run writes each step once."""

from __future__ import annotations

import csv

import pytest

from conftest import tiny_config

pytest.importorskip("tensorboard")


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_epoch_logs_each_metric_once_and_images(samples, tmp_path):
    from featinv.training import train

    out = tmp_path / "tb"
    train(tiny_config(samples / "train", samples / "val", epochs=3, log="tensorboard"), out)
    acc = _events(out / "tensorboard")
    rows = _rows(out)
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/mse", "val/psnr", "val/ssim", "val/mse", "train/lr", "time/train_images_per_s"} <= set(tags)
    for tag, column in (("val/psnr", "val_psnr"), ("train/lr", "lr"), ("train/loss", "train_loss")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([float(r[column]) for r in rows], rel=1e-5)
    images = acc.Images("val/original_over_reconstruction")
    assert [i.step for i in images] == [1, 2, 3]
    assert images[0].height >= 2 * 224 and images[0].width >= 3 * 224  # 3 val photos, each original over reconstruction


def test_off_by_default_writes_no_event_files(tiny_run):
    assert not (tiny_run / "tensorboard").exists()


def test_a_resumed_run_writes_each_step_once(samples, tmp_path):
    """Interrupted in epoch 2, with an event for epoch 2 already on disk (as a session that died
    after logging, before its checkpoint, would leave): after the resume each step holds one value,
    the resumed run's."""
    import featinv.training as T
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "resumed"
    cfg = tiny_config(samples / "train", samples / "val", epochs=3, log="tensorboard", checkpoint_every=1)

    class StopInEpochTwo(T.StopSignals):
        calls = 0

        @property
        def signal(self):
            StopInEpochTwo.calls += 1
            return "SIGTERM" if StopInEpochTwo.calls == 5 else None  # after step 1 of epoch 2

        @signal.setter
        def signal(self, value):
            pass

    with pytest.raises(T.TrainingInterrupted):
        T.Trainer(cfg, out, signals=StopInEpochTwo()).fit()
    stray = SummaryWriter(str(out / "tensorboard"))
    stray.add_scalar("val/psnr", -1.0, 2)  # a stale epoch 2 from the interrupted session
    stray.close()
    T.Trainer(cfg, out, resume=True).fit()
    acc = _events(out / "tensorboard")
    events = acc.Scalars("val/psnr")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([float(r["val_psnr"]) for r in _rows(out)], rel=1e-5)
