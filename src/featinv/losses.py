"""Training losses. Each returns a dict of its parts: ``{"loss": total, "mse": ..., ...}``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig
from .utils import FeatinvError

TARGET_RANGE_MESSAGE = (
    "loss targets must be [0,1] RGB images; got values outside [0,1] "
    "(ImageNet-normalized targets were the original project's fault)"
)


def check_target_range(target: torch.Tensor) -> None:
    """Refuse targets outside [0,1]. On CUDA the check is asynchronous: no host sync per step."""
    ok = (target.min() >= 0) & (target.max() <= 1)
    if target.is_cuda:
        torch._assert_async(ok, TARGET_RANGE_MESSAGE)
    elif not bool(ok):
        raise ValueError(TARGET_RANGE_MESSAGE)


class ReconstructionLoss(nn.Module):
    """Weighted sum of pixel losses between a reconstruction and its [0,1] target."""

    def __init__(self, mse: float = 1.0) -> None:
        super().__init__()
        if mse <= 0:
            raise FeatinvError("the loss needs a positive weight on at least one term (mse).")
        self.w_mse = mse

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        check_target_range(target)
        parts = {"mse": F.mse_loss(pred.float(), target.float())}
        parts["loss"] = self.w_mse * parts["mse"]
        return parts


def build_loss(cfg: LossConfig) -> ReconstructionLoss:
    return ReconstructionLoss(mse=cfg.mse)
