"""Shared fixtures: small image folders and one tiny trained run, reused across tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from featinv.data import sample_images_dir

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def samples() -> Path:
    return sample_images_dir()


@pytest.fixture()
def flat_folder(tmp_path: Path, samples: Path) -> Path:
    """The 12 bundled photos in one flat folder."""
    root = tmp_path / "flat"
    root.mkdir()
    for p in sorted(samples.glob("*/*.jpg")):
        shutil.copy(p, root / p.name)
    return root


def tiny_config(data: Path, val: Path, epochs: int = 2, **train_kw):
    from featinv.config import BackboneConfig, DataConfig, DecoderConfig, RunConfig, TrainConfig

    return RunConfig(
        data=DataConfig(data=str(data), val_data=str(val), num_workers=0),
        backbone=BackboneConfig(name="resnet50", weights="random"),
        decoder=DecoderConfig(name="pyramid", width=32),
        train=TrainConfig(epochs=epochs, batch_size=3, lr=3e-3, seed=0, device="cpu", num_save=3, **train_kw),
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, samples: Path) -> Path:
    """A 2-epoch run on the bundled photos (random ResNet-50 weights), trained once per session."""
    from featinv.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(samples / "train", samples / "val"), out)
    return out


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, samples: Path):
    """A 1-epoch sweep over layer1 and layer3 (random ResNet-50 weights, 3 training images)."""
    from featinv.cli import main

    out = tmp_path_factory.mktemp("sweep") / "s"
    argv = ["-q", "sweep", "--data", str(samples / "train"), "--val-data", str(samples / "val"),
            "--out", str(out), "--weights", "random", "--layer-sets", "layer1", "layer3",
            "--epochs", "1", "--batch-size", "3", "--max-images", "3", "--width", "16",
            "--num-save", "2", "--workers", "0", "--device", "cpu"]
    assert main(argv) == 0
    return out, argv
