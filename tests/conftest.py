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
    """fp32, so that the suite's numbers do not depend on whether this CPU has bf16. No batch-norm
    recomputation before each validation: over these 9 training photos it costs three validations
    per epoch in every tiny run; its own test turns it on."""
    from featinv.config import BackboneConfig, DataConfig, DecoderConfig, RunConfig, TrainConfig

    train_kw = {"precision": "fp32", "val_bn_images": 0, **train_kw}
    return RunConfig(
        data=DataConfig(data=str(data), val_data=str(val), num_workers=0),
        backbone=BackboneConfig(name="resnet50", weights="random"),
        decoder=DecoderConfig(name="pyramid", width=32),
        train=TrainConfig(epochs=epochs, batch_size=3, lr=3e-3, seed=0, device="cpu", num_save=3, **train_kw),
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, samples: Path) -> Path:
    """A 2-epoch run on the bundled photos (random ResNet-50 weights), trained once per session."""
    from featinv.training import train

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


def resume_counting_steps(out: Path):
    """Resume the run in ``out`` as `featinv train --out OUT --resume` does; returns its summary and
    the number of training steps this session ran."""
    from featinv.rundir import RunDir
    from featinv.training import Trainer

    class Counting(Trainer):
        steps = 0

        def train_step(self, *args, **kwargs):
            Counting.steps += 1
            return super().train_step(*args, **kwargs)

    summary = Counting(RunDir(out).read_config(), out, resume=True).fit()
    return summary, Counting.steps


def read_rows(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(a_dir: Path, b_dir: Path) -> None:
    """A resumed run ends as the uninterrupted one: weights, optimizer state, and the summary's
    mean-image reference, best epoch and val scores."""
    import json

    import pytest
    from safetensors.torch import load_file

    a, b = load_file(str(a_dir / "decoder.safetensors")), load_file(str(b_dir / "decoder.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    oa = torch.load(a_dir / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    ob = torch.load(b_dir / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            assert torch.allclose(v.float(), ob["state"][i][k].float(), rtol=1e-4, atol=1e-6), (i, k)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a_dir, b_dir))
    assert sa["reference"]["mean_image"] == pytest.approx(sb["reference"]["mean_image"], rel=1e-6)
    assert sa["best_epoch"] == sb["best_epoch"]
    assert sa["val"] == pytest.approx(sb["val"], rel=1e-4, abs=1e-6)
