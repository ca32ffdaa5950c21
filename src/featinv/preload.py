"""Prepared caches held on the training device, and batches made there.

With ``--preload`` (the default on a GPU when the images fit in :data:`PRELOAD_SHARE` of its
memory) the uint8 pixels of every image a run uses are copied to the device once; each batch is
then gathered, cropped, flipped and colour-jittered there by a few batched tensor operations: no
loader workers, no host-to-device copy per step. The crops, flips and jitter factors of a pass
are :func:`featinv.images.draws` of (seed, pass, image), computed on the CPU for all images at
once: the crops :class:`featinv.data.ImageDataset`'s loader makes one image at a time, on every
device, and a run resumed mid-epoch replays them.
Only prepared caches (``featinv prepare``) of one size can be preloaded; folders of image files
keep the loader.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from .cache import cache_array
from .data import EpochSampler
from .images import Augment, ImageRecord, draws, jitter_factors

log = logging.getLogger("featinv")

PRELOAD_SHARE = 1 / 3  # of the device's memory: the rest is the models', the batches' and the allocator's
CHUNK = 512  # images copied to the device at a time


def preload_blocker(records: Sequence[ImageRecord], augment: Augment) -> Optional[str]:
    """Why these records cannot be preloaded (None: they can)."""
    if any(r.cache_index < 0 for r in records):
        return "the images are files, not a prepared cache (featinv prepare)"
    if len({cache_size(r) for r in records}) > 1:
        return "the prepared caches hold crops of different sizes"
    if augment.crop_scale < 1.0:
        return "random-resized crops (--crop-scale below 1) resize each crop; the loader does that"
    return None


def cache_size(record: ImageRecord) -> int:
    return cache_array(str(record.path)).shape[1]


def preload_bytes(records: Sequence[ImageRecord]) -> int:
    """Bytes the records' pixels take on the device."""
    return sum(cache_size(r) ** 2 * 3 for r in records) if records else 0


class DeviceImages:
    """The uint8 pixels (N×S×S×3) of ``records`` (all from prepared caches of one size) on ``device``;
    ``row(record)`` is a record's row."""

    def __init__(self, records: Sequence[ImageRecord], device: torch.device) -> None:
        unique = list(dict.fromkeys((r.path, r.cache_index) for r in records))
        self.rows = {key: i for i, key in enumerate(unique)}
        size = cache_array(str(unique[0][0])).shape[1] if unique else 0
        self.pixels = torch.empty((len(unique), size, size, 3), dtype=torch.uint8, device=device)
        by_cache: dict = defaultdict(list)
        for i, (root, index) in enumerate(unique):
            by_cache[root].append((index, i))
        for root, pairs in by_cache.items():
            pairs.sort()  # the file in order: sequential reads
            arr = cache_array(str(root))
            for s in range(0, len(pairs), CHUNK):
                part = pairs[s : s + CHUNK]
                block = torch.from_numpy(arr[[p[0] for p in part]])
                self.pixels[torch.tensor([p[1] for p in part], device=device)] = block.to(device)

    @property
    def size(self) -> int:
        return self.pixels.shape[1]

    def holds(self, records: Sequence[ImageRecord]) -> bool:
        return all((r.path, r.cache_index) in self.rows for r in records)

    def row(self, record: ImageRecord) -> int:
        return self.rows[(record.path, record.cache_index)]


def jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, then saturation of uint8 B×3×H×W images by per-image ``factors``
    (B×3), as torchvision's ``adjust_*`` do one image at a time (float arithmetic, truncated)."""

    def blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return (a * f + b * (1.0 - f)).clamp_(0, 255).to(torch.uint8)

    def gray(a: torch.Tensor) -> torch.Tensor:
        r, g, b = a.unbind(1)
        return (r * 0.2989 + g * 0.587 + b * 0.114).floor_().unsqueeze(1)

    f = factors.to(torch.float32).view(-1, 3, 1, 1, 1).unbind(1)
    x = (x * f[0]).clamp_(0, 255).to(torch.uint8)
    x = blend(x, gray(x).mean(dim=(1, 2, 3), keepdim=True), f[1])
    return blend(x, gray(x), f[2])


class DeviceLoader:
    """Batches of preloaded images in :class:`~featinv.data.EpochSampler` order, made on the device:
    the loader the training loop and evaluation read (``sampler.set_epoch``, batch dicts with
    ``image`` uint8 B×3×S×S in channels-last memory, ``index``, ``label``, ``skipped``)."""

    def __init__(self, images: DeviceImages, records: Sequence[ImageRecord], size: int, batch_size: int,
                 train: bool, shuffle: bool, seed: int = 0, augment: Augment = Augment(), rank: int = 0,
                 world: int = 1, repeats: int = 1) -> None:
        self.images, self.size, self.batch_size, self.train, self.seed = images, size, batch_size, train, seed
        self.augment = augment
        device = images.pixels.device
        self.positions = torch.tensor([images.row(r) for r in records], dtype=torch.long, device=device)
        self.labels = torch.tensor([r.label for r in records], dtype=torch.long)
        self.sampler = EpochSampler(len(records), shuffle, seed, batch_size, rank, world, repeats)
        self.offsets = torch.arange(size, device=device)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def draws(self, pass_: int) -> torch.Tensor:
        """One pass's crop offsets, flips and jitter factors for every image (n×6), from the draws
        the loader takes one image at a time (:func:`featinv.images.draws`)."""
        n, room = len(self.positions), self.images.size - self.size
        u = draws(self.seed, pass_, np.arange(n))
        top, left = np.floor(u[:, 2] * (room + 1)), np.floor(u[:, 3] * (room + 1))
        flip = (u[:, 4] < 0.5).astype(np.float64)
        factors = jitter_factors(u, self.augment.color_jitter)
        return torch.from_numpy(np.concatenate([top[:, None], left[:, None], flip[:, None], factors], 1))

    def __iter__(self) -> Iterator[dict]:
        keys = list(self.sampler)
        if not keys:
            return
        device = self.positions.device
        index = torch.tensor([i for i, _ in keys], dtype=torch.long)
        if self.train:
            passes = sorted({e for _, e in keys})
            table = torch.stack([self.draws(e) for e in passes]).to(device)  # passes×n×6
            where = {e: k for k, e in enumerate(passes)}
            pass_of = torch.tensor([where[e] for _, e in keys], dtype=torch.long).to(device)
            d = table[pass_of, index.to(device)]  # one row of draws per item, in order
        else:  # the center crop, as torchvision's center_crop places it
            d = torch.zeros(len(keys), 6, dtype=torch.float64, device=device)
            d[:, :2] = int(round((self.images.size - self.size) / 2.0))
        index_dev = index.to(device)
        for s in range(0, len(keys), self.batch_size):
            b = slice(s, s + self.batch_size)
            yield {"image": self.crop(index_dev[b], d[b]), "index": index[b], "label": self.labels[index[b]], "skipped": []}

    def crop(self, index: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The crops (flipped, jittered) of images ``index`` by draws ``d``: uint8 B×3×S×S."""
        top, left, flip = d[:, 0].long(), d[:, 1].long(), d[:, 2] > 0
        ar = self.offsets
        rows = top[:, None] + ar
        cols = left[:, None] + torch.where(flip[:, None], self.size - 1 - ar, ar)
        x = self.images.pixels[self.positions[index][:, None, None], rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)  # B×3×S×S, channels-last in memory
        if self.train and self.augment.color_jitter > 0:
            x = jitter(x, d[:, 3:]).contiguous(memory_format=torch.channels_last)
        return x
