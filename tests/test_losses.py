import pytest
import torch

from featinv import losses
from featinv.train import train

from conftest import tiny_config


def test_mse_loss_returns_parts_and_is_zero_for_identical_images():
    x = torch.rand(2, 3, 16, 16)
    parts = losses.ReconstructionLoss()(x, x)
    assert set(parts) == {"loss", "mse"} and float(parts["loss"]) == 0.0
    y = x.clone().requires_grad_(True)
    out = losses.ReconstructionLoss()(y * 0.5, x)
    assert float(out["loss"].detach()) > 0
    out["loss"].backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_normalized_targets_are_refused():
    x = torch.rand(2, 3, 16, 16)
    normalized = (x - 0.45) / 0.225
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        losses.ReconstructionLoss()(x, normalized)


def test_training_gives_the_loss_unnormalized_unit_range_targets(tmp_path, samples, monkeypatch):
    """The original compared a sigmoid output with ImageNet-normalized targets (PSNR ≈ 1 dB).
    Spy on every target the loss sees during a real (tiny) training run."""
    seen = []
    original = losses.ReconstructionLoss.forward

    def spy(self, pred, target):
        seen.append((float(target.min()), float(target.max()), float(target.mean())))
        return original(self, pred, target)

    monkeypatch.setattr(losses.ReconstructionLoss, "forward", spy)
    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.data.max_images = 3
    train(cfg, tmp_path / "run")
    assert seen
    for lo, hi, mean in seen:
        assert 0.0 <= lo and hi <= 1.0
        assert 0.05 < mean < 0.95  # photos, not zero-centred normalized tensors
