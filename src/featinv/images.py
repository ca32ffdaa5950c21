"""Image files: finding them in a folder, decoding any supported file to RGB, cropping.

The lowest layer of the data path: :mod:`featinv.cache` (prepared caches) and
:mod:`featinv.data` (datasets, splits, loaders) both build on it. Everything here returns RGB
``uint8`` tensors (3×H×W) or PIL images.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from .utils import FeatinvError

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


def list_folder(root: Path) -> ImageSet:
    """The image files under the folder ``root`` (absolute), recursively, in a stable order;
    an ImageFolder tree (every image in a sub-folder) gives classes."""
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


DRAWS = 8  # uniform numbers per image and pass: area, ratio, top, left, flip, brightness, contrast, saturation


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def draws(seed: int, pass_: int, index: Union[int, np.ndarray]) -> np.ndarray:
    """The augmentation's uniform numbers in [0, 1) for images ``index`` in pass ``pass_`` of a run
    seeded ``seed``: len(index)×DRAWS, a counter-based generator (SplitMix64 of the three), so the
    loader's one image at a time and :mod:`featinv.preload`'s whole epoch at once draw the same
    numbers, on any device, and a resumed run replays them."""
    idx = np.atleast_1d(np.asarray(index)).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(_splitmix64(np.array([seed % 2**64], dtype=np.uint64)) + np.uint64(pass_ % 2**64))
        base = _splitmix64(key + idx)[:, None]
        bits = _splitmix64(base + np.arange(DRAWS, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def preprocess(
    img: Image.Image,
    image_size: int = 224,
    resize: int = 256,
    train: bool = False,
    u: Optional[np.ndarray] = None,
    augment: Augment = Augment(),
) -> torch.Tensor:
    """Short side to ``resize`` (upscaling small images), then a ``image_size`` crop.

    Evaluation takes the center crop; training a random crop and a random horizontal flip (see
    :class:`Augment`), placed by ``u`` (one row of :func:`draws`) so a run can replay them.
    Returns uint8 3×S×S.
    """
    return crop(TF.resize(TF.pil_to_tensor(img), [resize], antialias=True), image_size, train, u, augment)


def crop_window(h: int, w: int, image_size: int, u: np.ndarray, augment: Augment = Augment()) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the training crop that draws ``u`` place in an h×w image."""
    ch = cw = image_size
    if augment.crop_scale < 1.0:
        area = (augment.crop_scale + (1.0 - augment.crop_scale) * u[0]) * min(h, w) ** 2
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        ch = min(h, max(8, round(math.sqrt(area / ratio))))
        cw = min(w, max(8, round(math.sqrt(area * ratio))))
    return int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1)), ch, cw


def jitter_factors(u: np.ndarray, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation factors in [1 - strength, 1 + strength] from draws ``u``."""
    return 1.0 - strength + 2.0 * strength * u[..., 5:8]


def crop(
    x: torch.Tensor,
    image_size: int,
    train: bool,
    u: Optional[np.ndarray] = None,
    augment: Augment = Augment(),
) -> torch.Tensor:
    """The ``image_size`` crop of a uint8 3×H×W image: centered, or random (see :class:`Augment`),
    placed, flipped and jittered by ``u``, one row of :func:`draws`."""
    h, w = x.shape[-2:]
    if min(h, w) < image_size:
        raise FeatinvError(f"image is {h}×{w}, smaller than the crop size {image_size} (prepare the cache at a larger --size).")
    if not train:
        return TF.center_crop(x, [image_size, image_size]).contiguous()
    if u is None:
        u = np.random.default_rng().random(DRAWS)
    top, left, ch, cw = crop_window(h, w, image_size, u, augment)
    x = x[:, top : top + ch, left : left + cw]
    if (ch, cw) != (image_size, image_size):
        x = TF.resize(x, [image_size, image_size], antialias=True)
    if u[4] < 0.5:
        x = x.flip(-1)
    if augment.color_jitter > 0:
        b, c, s = jitter_factors(u, augment.color_jitter).tolist()
        x = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s)
    return x.contiguous()
