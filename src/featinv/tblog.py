"""Live curves in TensorBoard (``--log tensorboard``): per epoch, every number of the run's
metrics.csv row and a few validation reconstructions beside their originals, into ``RUN/tensorboard/``.

Only rank 0 writes. A resumed run opens the same folder with ``purge_step`` at its first epoch, so
TensorBoard drops anything an interrupted session had written from that epoch on: each step once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .utils import FeatinvError

LOGGERS = ("none", "tensorboard")
IMAGES = 4  # validation images shown per epoch
TAGS = {"train_loss": "train/loss", "val_mse": "val/mse", "val_psnr": "val/psnr", "val_ssim": "val/ssim",
        "lr": "train/lr", "epoch_time_s": "time/epoch_s", "train_images_per_s": "time/train_images_per_s"}


def tag_of(column: str) -> str:
    """The TensorBoard tag of a metrics.csv column (a loss term ``train_<term>`` → ``train/<term>``)."""
    if column in TAGS:
        return TAGS[column]
    return "train/" + column[len("train_"):] if column.startswith("train_") else column


class TensorBoardLog:
    """One run's event files; ``epoch`` writes an epoch's row and images."""

    def __init__(self, folder: Path, first_epoch: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FeatinvError("--log tensorboard needs the tensorboard package: pip install 'featinv[tensorboard]'.") from None
        # purge_step: events of a previous session at steps >= this one are dropped by the reader
        self.writer = SummaryWriter(str(folder), purge_step=first_epoch + 1 if first_epoch else None)

    def epoch(self, row: Mapping[str, Any], originals: Optional[torch.Tensor] = None,
              reconstructions: Optional[torch.Tensor] = None) -> None:
        step = int(row["epoch"])
        for column, value in row.items():
            if column != "epoch" and value not in ("", None):
                self.writer.add_scalar(tag_of(column), float(value), step)
        if originals is not None and reconstructions is not None and len(originals):
            n = min(IMAGES, len(originals))
            # each image: the original above its reconstruction (uint8, N×3×2H×W)
            pairs = torch.cat([originals[:n].cpu(), reconstructions[:n].cpu().to(originals.dtype)], dim=2)
            self.writer.add_images("val/original_over_reconstruction", pairs, step, dataformats="NCHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
