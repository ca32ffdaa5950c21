"""The feature cache: a frozen backbone's outputs for the training images, float16 on disk."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import dist
from .utils import FeatinvError

log = logging.getLogger("featinv")


class FeatureCache:
    """The frozen backbone's outputs for the training images, float16 on disk.

    One memory-mapped ``<layer>.f16`` file per tap (N×C×H×W). Filled during the first epoch
    (which computes the features anyway); later epochs read them instead of running the
    backbone. Only valid when every epoch sees the same crops (no augmentation). Which rows are
    filled travels in the training checkpoint, so a resumed run trusts exactly the rows that
    were flushed before that checkpoint was written.

    Under torchrun the ranks share one cache: rank 0 makes the files (``create``), the others
    open them; each rank writes the rows of the images it computed, and :meth:`sync` (every
    rank, before a checkpoint) agrees which rows are filled.
    """

    def __init__(self, root: Path, n: int, shapes: dict[str, tuple[int, ...]], filled: Optional[torch.Tensor] = None,
                 create: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.arrays: dict[str, np.memmap] = {}
        paths = {k: self.root / f"{k}.f16" for k in shapes}
        # Rows marked filled are trusted only if every file is there at its full size.
        reuse = filled is not None and len(filled) == n and all(
            p.is_file() and p.stat().st_size == 2 * n * int(np.prod(shapes[k])) for k, p in paths.items()
        )
        for k, shape in shapes.items():
            mode = "r+" if reuse or not create else "w+"
            self.arrays[k] = np.memmap(paths[k], dtype=np.float16, mode=mode, shape=(n, *shape))
        self.filled = filled.clone().bool() if reuse else torch.zeros(n, dtype=torch.bool)

    @staticmethod
    def bytes_needed(n: int, shapes: dict[str, tuple[int, ...]]) -> int:
        return 2 * n * sum(int(np.prod(s)) for s in shapes.values())

    @staticmethod
    def check_space(root: Path, n: int, shapes: dict[str, tuple[int, ...]]) -> int:
        """Bytes the cache needs; refuses (FeatinvError) when the disk holding ``root`` lacks them."""
        need = FeatureCache.bytes_needed(n, shapes)
        have = sum(p.stat().st_size for p in Path(root).glob("*.f16")) if Path(root).is_dir() else 0
        probe = Path(root)
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free + have
        log.info("feature cache: %.2f GB (float16) for %d training images in %s; %.1f GB free", need / 1e9, n, root, free / 1e9)
        if need > 0.95 * free:
            raise FeatinvError(
                f"--cache-features needs {need / 1e9:.2f} GB in {root} but only {free / 1e9:.2f} GB are free; "
                "free some space, use fewer --layers or images, or drop --cache-features."
            )
        return need

    def has(self, index: torch.Tensor) -> bool:
        return bool(self.filled[index].all())

    def put(self, index: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        rows = index.numpy()
        for k, v in features.items():
            self.arrays[k][rows] = v.detach().to("cpu", torch.float16).contiguous().numpy()
        self.filled[index] = True

    def get(self, index: torch.Tensor, device: torch.device, channels_last: bool = False) -> dict[str, torch.Tensor]:
        rows = index.numpy()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return {
            k: torch.from_numpy(np.ascontiguousarray(a[rows])).to(device, non_blocking=True).float().contiguous(memory_format=fmt)
            for k, a in self.arrays.items()
        }

    def flush(self) -> None:
        for a in self.arrays.values():
            a.flush()

    def sync(self) -> None:
        """Flush this rank's rows, then mark filled the rows any rank filled (a collective under torchrun)."""
        self.flush()
        self.filled = dist.reduce_over_ranks(self.filled.to(torch.int32), "max").bool()
