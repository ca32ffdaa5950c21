"""Datasets of images: finding them (folders or prepared caches), splitting, loading in batches.

Everything here returns RGB ``uint8`` tensors (3×H×W); conversion to float [0,1] happens on the
device, where it is cheap. Nothing in this module knows about models.
"""

from __future__ import annotations

import hashlib
import logging
import dataclasses
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .cache import cache_array, is_cache, read_cache
from .config import DataConfig
from .images import (  # noqa: F401 - the image layer, importable from here as before
    IMAGE_EXTENSIONS, Augment, ImageRecord, ImageSet, crop, draws, list_folder, load_image, preprocess, probe_image,
)
from .utils import FeatinvError, default_num_workers, progress_enabled

log = logging.getLogger("featinv")

class SkipLog:
    """Files that could not be used: each is reported once, with its reason.
    With ``strict``, the first one is an error instead."""

    def __init__(self, strict: bool = False) -> None:
        self.reasons: dict[str, str] = {}
        self.strict = strict

    def add(self, relpath: str, reason: str) -> None:
        if self.strict:
            raise FeatinvError(f"cannot use {relpath}: {reason} (--strict turns skips into errors).")
        if relpath not in self.reasons:
            self.reasons[relpath] = reason
            log.warning("skipping %s: %s", relpath, reason)

    def __len__(self) -> int:
        return len(self.reasons)

    def rows(self) -> list[tuple[str, str]]:
        return sorted(self.reasons.items())


def sample_images_dir() -> Path:
    """The photos bundled with the package (``train/`` and ``val/``; licences in ``SAMPLES.md``)."""
    return Path(str(resources.files("featinv") / "assets" / "samples"))


def find_images(root: Union[str, Path]) -> ImageSet:
    """List the images under ``root``, recursively, in a stable order.

    A root whose images all sit in sub-folders is read as an ImageFolder tree: the first
    path component is the class. A root with images directly inside is a flat folder.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FeatinvError(f"data folder {root} does not exist.")
    if not root.is_dir():
        raise FeatinvError(f"{root} is not a folder; pass a folder of images (or a cache from `featinv prepare`).")
    root = root.resolve()
    if is_cache(root):
        info = read_cache(root)
        records = [ImageRecord(root, f, lab, i) for i, (f, lab, ok) in enumerate(zip(info.files, info.labels, info.ok)) if ok]
        unusable = [(f, "could not be decoded when the cache was prepared") for f, ok in zip(info.files, info.ok) if not ok]
        return ImageSet(root, records, info.classes, unusable, info.size)
    return list_folder(root)


def check_data_paths(cfg: DataConfig) -> None:
    """The folders and files a data config names exist, in one sentence for the first that does
    not: a cheap look before anything is written or loaded (:func:`split_for_config` reads them)."""
    named = [("--data", cfg.data), ("--val-data", cfg.val_data), *(("--extra-data", e) for e in cfg.extra_data)]
    for flag, path in named:
        if path and not Path(path).expanduser().exists():
            raise FeatinvError(f"{flag} {path} does not exist.")
    if cfg.split_file and not Path(cfg.split_file).is_file():
        raise FeatinvError(f"split file {cfg.split_file} does not exist.")


def hash_fraction(relpath: str) -> float:
    """A number in [0,1) fixed by the file's relative path alone."""
    return int.from_bytes(hashlib.sha1(relpath.encode("utf-8")).digest()[:8], "big") / 2**64


def split_records(
    records: Sequence[ImageRecord], val_fraction: float
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Deterministic train/val split by hashing each relative path.

    A file's side depends on its own path only, so adding files never moves existing ones.
    When the hash puts no file in val (tiny folders), the file with the smallest hash goes there.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise FeatinvError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
    keyed = [(hash_fraction(r.relpath), r) for r in records]
    val = [r for h, r in keyed if h < val_fraction]
    if val_fraction > 0 and not val and len(records) > 1:
        val = [min(keyed, key=lambda hr: hr[0])[1]]
    val_set = {r.relpath for r in val}
    train = [r for r in records if r.relpath not in val_set]
    return train, val


def probe_records(records: Sequence[ImageRecord], skips: SkipLog) -> list[ImageRecord]:
    """Keep the records whose header opens; log the others in ``skips``."""
    from .utils import progress_bar as tqdm

    good = []
    for r in tqdm(records, desc="checking images", unit="img", disable=not progress_enabled() or len(records) < 500):
        if r.cache_index >= 0:  # decoded once already, by `featinv prepare`
            good.append(r)
            continue
        reason = probe_image(r.path)
        if reason is None:
            good.append(r)
        else:
            skips.add(r.relpath, reason)
    return good


class ImageDataset(Dataset):
    """Decodes and crops images on demand.

    Items are addressed by ``(index, pass)`` (see :class:`EpochSampler`), so the random crop of
    an image in a pass is fixed by (seed, pass, index) (:func:`featinv.images.draws`): resumed
    runs replay it exactly, with any number of loader workers, and :mod:`featinv.preload` makes
    the same crops on the device. A file that fails to decode yields an ``error`` entry instead
    of an image; :func:`collate` moves those aside.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: int = 224,
        resize: int = 256,
        train: bool = False,
        seed: int = 0,
        augment: Augment = Augment(),
    ) -> None:
        if resize < image_size:
            raise FeatinvError(f"resize ({resize}) must be at least the crop size ({image_size}).")
        self.records = list(records)
        self.image_size, self.resize, self.train, self.seed = image_size, resize, train, seed
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rec = self.records[index]
        u = draws(self.seed, epoch, index)[0] if self.train else None
        if rec.cache_index >= 0:
            pixels = torch.from_numpy(np.array(cache_array(str(rec.path))[rec.cache_index]))
            return {"index": index, "image": crop(pixels.permute(2, 0, 1), self.image_size, self.train, u, self.augment),
                    "label": rec.label}
        try:
            img = load_image(rec.path)
        except Exception as e:  # noqa: BLE001 - any decode failure is a skip, reported by name
            return {"index": index, "error": f"{type(e).__name__}: {e}" if str(e) else type(e).__name__}
        x = preprocess(img, self.image_size, self.resize, self.train, u, self.augment)
        return {"index": index, "image": x, "label": rec.label}


def collate(items: list[dict]) -> dict:
    """Stack the decoded images; failed ones go to ``skipped`` as (index, reason)."""
    good = [it for it in items if "image" in it]
    batch: dict = {"skipped": [(it["index"], it["error"]) for it in items if "error" in it]}
    if good:
        batch["image"] = torch.stack([it["image"] for it in good])
        batch["index"] = torch.tensor([it["index"] for it in good])
        batch["label"] = torch.tensor([it["label"] for it in good])
    return batch


class EpochSampler(Sampler):
    """Yields ``(index, pass)``; the order is a permutation fixed by (seed, pass).

    An epoch is ``repeats`` passes over the images (timm's epoch repeats: a large batch on a small
    set keeps enough steps per epoch), pass ``epoch * repeats + r`` each with its own order and
    crops; with one pass, the pass is the epoch. ``start`` skips the first items of the epoch
    (counted over all ranks), so a run resumed mid-epoch sees the rest. With ``world`` > 1 ranks
    the order is cut into global batches of ``batch``·``world`` images, rank ``rank`` taking its
    ``batch`` of each: the same images, step for step, as one process with the global batch. The
    order is padded (wrapping around to its start) to whole global batches, so every rank runs the
    same number of steps.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, batch: int = 1, rank: int = 0, world: int = 1,
                 repeats: int = 1) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.batch, self.rank, self.world, self.repeats = batch, rank, world, repeats
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[tuple[int, int]]:
        order: list[tuple[int, int]] = []
        for p in range(self.epoch * self.repeats, (self.epoch + 1) * self.repeats):
            if not self.shuffle:
                order += [(i, p) for i in range(self.n)]
            else:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
                order += [(i, p) for i in torch.randperm(self.n, generator=g).tolist()]
        if self.world > 1 and order:
            step = self.batch * self.world
            order += (order * step)[: -len(order) % step]
        return order

    def _mine(self) -> list[tuple[int, int]]:
        order = self.order()[self.start :]
        if self.world == 1:
            return order
        g = self.batch * self.world
        return [i for s in range(0, len(order), g) for i in order[s + self.rank * self.batch : s + (self.rank + 1) * self.batch]]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        yield from self._mine()

    def __len__(self) -> int:
        return len(self._mine())


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = -1,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
    persistent: bool = False,
    repeats: int = 1,
) -> DataLoader:
    """Batches of ``dataset`` in :class:`EpochSampler` order (this rank's share of each global batch).
    ``persistent``: keep the workers between passes (a loader read every epoch); close such a
    loader with :func:`close_loader` when done. ``repeats``: passes over ``dataset`` per epoch."""
    workers = default_num_workers() if num_workers < 0 else num_workers
    # Few images: worker start-up costs more than it saves.
    if len(dataset) < 2 * batch_size:
        workers = 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle, seed, batch_size, rank, world, repeats),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0,
        worker_init_fn=_ignore_sigint if workers > 0 else None,
    )


def close_loader(loader: DataLoader) -> None:
    """Stop a persistent loader's workers now. Left to the garbage collector they outlive the run,
    and with pinned memory the interpreter then waits 5 s per worker at exit (pytorch/pytorch#81794;
    seen here: 90 s after a finished run on a 16-core GPU machine)."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()  # what the iterator's __del__ does
    loader._iterator = None


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the main process saves a checkpoint and stops the
    # workers itself, so they must not die mid-batch first.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def to_float(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 B×3×H×W (host) → float [0,1] on ``device`` (NHWC in memory with ``channels_last``)."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def read_split_file(path: Union[str, Path]) -> dict[str, str]:
    """``file,split`` rows (split = train or val; file relative to the data folder)."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise FeatinvError(f"split file {path} does not exist.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "split"} <= set(rows[0]):
        raise FeatinvError(f"split file {path} needs a header with the columns file and split.")
    bad = sorted({r["split"] for r in rows} - {"train", "val"})
    if bad:
        raise FeatinvError(f"split file {path}: split must be train or val, found {', '.join(bad)}.")
    return {r["file"]: r["split"] for r in rows}


def usable_records(images: ImageSet, skips: SkipLog) -> list[ImageRecord]:
    """The records of ``images`` that can be used; the others are logged in ``skips``."""
    for relpath, reason in images.unusable:
        skips.add(relpath, reason)
    return probe_records(images.records, skips)


def check_cache_size(images: ImageSet, image_size: int) -> None:
    if images.cache_size is not None and images.cache_size < image_size:
        raise FeatinvError(
            f"the cache in {images.root} holds {images.cache_size}×{images.cache_size} crops, smaller than "
            f"the crop size {image_size}; prepare it again with --size {image_size} or more."
        )


def _extra_records(folder: str, image_size: int, skips: SkipLog) -> list[ImageRecord]:
    """Every usable image of an ``extra_data`` folder (or cache), named ``<folder name>/<relpath>``."""
    images = find_images(folder)
    check_cache_size(images, image_size)
    prefix = Path(folder).name
    return [dataclasses.replace(r, relpath=f"{prefix}/{r.relpath}") for r in usable_records(images, skips)]


def split_for_config(cfg: DataConfig, skips: SkipLog) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The train and val records of ``cfg``: an explicit ``val_data`` folder, a ``split_file``
    (files it does not list are left out), or a hash split by ``val_fraction``.

    ``max_images`` keeps the training images with the smallest path hashes: a stable subset
    that mixes classes. Unreadable files are logged in ``skips`` and left out.
    """
    data, val_data, split_file, max_images = cfg.data, cfg.val_data, cfg.split_file, cfg.max_images
    # Probe before splitting: the split keys on paths alone, so skipped files move nobody.
    images = find_images(data)
    check_cache_size(images, cfg.image_size)
    records = usable_records(images, skips)
    if val_data and split_file:
        raise FeatinvError("pass either --val-data or --split-file, not both.")
    if val_data:
        val_images = find_images(val_data)
        check_cache_size(val_images, cfg.image_size)
        train, val = records, usable_records(val_images, skips)
    elif split_file:
        side = read_split_file(split_file)
        train = [r for r in records if side.get(r.relpath) == "train"]
        val = [r for r in records if side.get(r.relpath) == "val"]
        if records and not train and not val:
            raise FeatinvError(
                f"the split file {split_file} matched none of the {len(records)} images in {data} "
                f"(it names files such as {next(iter(side))!r}; the folder holds files such as "
                f"{records[0].relpath!r}): its file column must hold paths relative to --data."
            )
    else:
        train, val = split_records(records, cfg.val_fraction)
    for extra in cfg.extra_data:
        train += _extra_records(extra, cfg.image_size, skips)
    if max_images is not None:
        if max_images < 1:
            raise FeatinvError(f"--max-images must be at least 1, got {max_images}.")
        train = sorted(sorted(train, key=lambda r: hash_fraction(r.relpath))[:max_images], key=lambda r: r.relpath)
    if not train:
        raise FeatinvError(f"no usable training images in {data} (formats: {', '.join(IMAGE_EXTENSIONS)}).")
    if not val:
        where = val_data or data
        raise FeatinvError(
            f"no usable validation images in {where}; pass --val-data DIR or a larger --val-fraction."
        )
    return train, val
