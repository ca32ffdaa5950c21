"""Images in, [0,1]-ready uint8 tensors out: finding files, splitting, decoding, cropping.

Everything here returns RGB ``uint8`` tensors (3×H×W); conversion to float [0,1] happens on the
device, where it is cheap. Nothing in this module knows about models.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

from .config import DataConfig
from .utils import FeatinvError, progress_enabled

log = logging.getLogger("featinv")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute; for a prepared cache, the cache folder
    relpath: str  # POSIX path relative to the dataset root: the split key and the report name
    label: int = -1  # class index for ImageFolder trees, -1 for flat folders
    cache_index: int = -1  # row in a prepared cache (see featinv.cache), -1 for image files


@dataclass
class ImageSet:
    root: Path
    records: list[ImageRecord]
    classes: list[str] = field(default_factory=list)
    unusable: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason) known up front
    cache_size: Optional[int] = None  # side of the stored crops, for a prepared cache


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
    from .cache import is_cache, read_cache

    if is_cache(root):
        info = read_cache(root)
        records = [ImageRecord(root, f, lab, i) for i, (f, lab, ok) in enumerate(zip(info.files, info.labels, info.ok)) if ok]
        unusable = [(f, "could not be decoded when the cache was prepared") for f, ok in zip(info.files, info.ok) if not ok]
        return ImageSet(root, records, info.classes, unusable, info.size)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    flat = any("/" not in rel for rel in found)
    classes = [] if flat else sorted({rel.split("/", 1)[0] for rel in found})
    index = {c: i for i, c in enumerate(classes)}
    records = [
        ImageRecord(root / rel, rel, -1 if flat else index[rel.split("/", 1)[0]]) for rel in found
    ]
    return ImageSet(root, records, classes)


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


def _to_uint8_gray(arr: np.ndarray) -> np.ndarray:
    # 16- and 32-bit integer images: scale by the type's range, not by clipping at 255.
    peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return np.clip(np.round(arr.astype(np.float64) * (255.0 / peak)), 0, 255).astype(np.uint8)


def load_image(path: Union[str, Path]) -> Image.Image:
    """Decode any supported file to an RGB PIL image.

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images become RGB;
    transparent pixels are composited onto white; animated files give their first frame.
    Raises ``OSError``/``ValueError`` (and Pillow's decompression-bomb error) for unusable files.
    """
    with warnings.catch_warnings():
        # A bomb-sized image is a reason to skip, not a warning to scroll past.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            im.load()
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = Image.fromarray(_to_uint8_gray(np.asarray(im)))
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB")


def probe_image(path: Union[str, Path]) -> Optional[str]:
    """Cheap check that ``path`` is an image Pillow can open: ``None`` if fine, else the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
        if w < 1 or h < 1:
            return "image has no pixels"
    except FileNotFoundError:
        return "file not found (broken link?)"
    except PermissionError:
        return "permission denied"
    except UnidentifiedImageError:
        return "not an image Pillow can read"
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        return f"larger than Pillow's decompression-bomb limit ({e})"
    except (OSError, ValueError, SyntaxError) as e:
        return f"unreadable: {e}"
    return None


def probe_records(records: Sequence[ImageRecord], skips: SkipLog) -> list[ImageRecord]:
    """Keep the records whose header opens; log the others in ``skips``."""
    from tqdm.auto import tqdm

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


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation, drawn per (seed, epoch, image) so a resumed run replays it.

    A random crop: with ``crop_scale`` 1 an ``image_size`` crop at the image's own scale; below 1
    a random-resized crop whose area is a fraction in [``crop_scale``, 1] of the largest square
    (aspect ratio in [3/4, 4/3]), resized to ``image_size``, so the scale varies around the
    validation images' own (a short side of 256 gives ×0.875 to ×1.24 at ``crop_scale`` 0.5).
    Then a horizontal flip, and colour jitter of strength ``color_jitter``. Input and target are
    the same image, so every photometric change is a valid example for an inversion decoder.
    """

    crop_scale: float = 1.0
    color_jitter: float = 0.0


def preprocess(
    img: Image.Image,
    image_size: int = 224,
    resize: int = 256,
    train: bool = False,
    generator: Optional[torch.Generator] = None,
    augment: Augment = Augment(),
) -> torch.Tensor:
    """Short side to ``resize`` (upscaling small images), then a ``image_size`` crop.

    Evaluation takes the center crop; training a random crop and a random horizontal flip (see
    :class:`Augment`), drawn from ``generator`` so a run can replay them. Returns uint8 3×S×S.
    """
    return crop(TF.resize(TF.pil_to_tensor(img), [resize], antialias=True), image_size, train, generator, augment)


def _uniform(lo: float, hi: float, generator: Optional[torch.Generator]) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def crop(
    x: torch.Tensor,
    image_size: int,
    train: bool,
    generator: Optional[torch.Generator] = None,
    augment: Augment = Augment(),
) -> torch.Tensor:
    """The ``image_size`` crop of a uint8 3×H×W image: centered, or random (see :class:`Augment`)."""
    h, w = x.shape[-2:]
    if min(h, w) < image_size:
        raise FeatinvError(f"image is {h}×{w}, smaller than the crop size {image_size} (prepare the cache at a larger --size).")
    if not train:
        return TF.center_crop(x, [image_size, image_size]).contiguous()
    ch = cw = image_size
    if augment.crop_scale < 1.0:
        area = _uniform(augment.crop_scale, 1.0, generator) * min(h, w) ** 2
        ratio = math.exp(_uniform(math.log(3 / 4), math.log(4 / 3), generator))
        ch = min(h, max(8, round(math.sqrt(area / ratio))))
        cw = min(w, max(8, round(math.sqrt(area * ratio))))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    x = x[:, top : top + ch, left : left + cw]
    if (ch, cw) != (image_size, image_size):
        x = TF.resize(x, [image_size, image_size], antialias=True)
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    j = augment.color_jitter
    if j > 0:
        x = TF.adjust_brightness(x, _uniform(1 - j, 1 + j, generator))
        x = TF.adjust_contrast(x, _uniform(1 - j, 1 + j, generator))
        x = TF.adjust_saturation(x, _uniform(1 - j, 1 + j, generator))
    return x.contiguous()


class ImageDataset(Dataset):
    """Decodes and crops images on demand.

    Items are addressed by ``(index, epoch)`` (see :class:`EpochSampler`), so the random crop of
    an image in an epoch is fixed by (seed, epoch, index): resumed runs replay it exactly, with
    any number of loader workers. A file that fails to decode yields an ``error`` entry instead
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
        g = None
        if self.train:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
        if rec.cache_index >= 0:
            from .cache import cache_array

            pixels = torch.from_numpy(np.array(cache_array(str(rec.path))[rec.cache_index]))
            return {"index": index, "image": crop(pixels.permute(2, 0, 1), self.image_size, self.train, g, self.augment), "label": rec.label}
        try:
            img = load_image(rec.path)
        except Exception as e:  # noqa: BLE001 - any decode failure is a skip, reported by name
            return {"index": index, "error": f"{type(e).__name__}: {e}" if str(e) else type(e).__name__}
        x = preprocess(img, self.image_size, self.resize, self.train, g, self.augment)
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
    """Yields ``(index, epoch)``; the order is a permutation fixed by (seed, epoch).

    ``start`` skips the first items of the epoch, so a run resumed mid-epoch sees the rest.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.order()[self.start :]:
            yield (i, self.epoch)

    def __len__(self) -> int:
        return self.n - self.start


def default_num_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(cpus - 1, 8))


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = -1,
    pin_memory: bool = False,
) -> DataLoader:
    workers = default_num_workers() if num_workers < 0 else num_workers
    # Few images: worker start-up costs more than it saves.
    if len(dataset) < 2 * batch_size:
        workers = 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle, seed),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_sigint if workers > 0 else None,
    )


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
