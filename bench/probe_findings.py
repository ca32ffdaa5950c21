"""What the shipped decoders' features encode: `featinv probe --shipped` on held-out photos, kept.

Runs every probe on the first ``--images`` val photos of imagenet-sample's split.csv (held out from
the shipped decoders' training) and copies the CSV files and probe.json into ``--keep`` (the
documentation's probe table reads them: bench/tables.py). ImageNet photos may not be
redistributed, so no figure of them is kept; ``--figures DIR`` runs the probes once more on the
bundled colour photos (CC0) and copies those figures there, for the documentation.

    python bench/probe_findings.py --keep bench/results/probe-shipped --figures docs/figures
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"
BUNDLED_COLOUR = ["val/chelsea.jpg", "val/coffee.jpg", "val/rocket.jpg", "train/astronaut.jpg", "train/retina.jpg"]
FIGURES = {"invariance.png": "probe-invariance.jpg", "invariance_curves.png": "probe-invariance-curves.png",
           "interpolation.png": "probe-interpolation.jpg", "ablation_50.png": "probe-ablation.jpg",
           "views.png": "probe-views.png"}  # photographs as JPEG (a fifth of the bytes), plots as PNG


def val_photos(data: Path, n: int) -> list[Path]:
    with open(data / "split.csv", newline="", encoding="utf-8") as f:
        return [data / r["file"] for r in csv.DictReader(f) if r["split"] == "val"][:n]


def copy_figure(src: Path, dst: Path) -> None:
    if dst.suffix == ".jpg":
        from PIL import Image

        with Image.open(src) as im:
            im.convert("RGB").save(dst, quality=88, optimize=True)
    else:
        shutil.copy(src, dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="the imagenet-sample folder (with split.csv)")
    ap.add_argument("--images", type=int, default=8, help="val photos probed (default 8)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/probe-shipped"))
    ap.add_argument("--keep", type=Path, help="copy the CSV files and probe.json here")
    ap.add_argument("--figures", type=Path, help="also probe the bundled colour photos and copy the figures here")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from featinv.data import sample_images_dir
    from featinv.probe import probe

    if not (args.data / "split.csv").is_file():
        sys.exit(f"{args.data}/split.csv not found; pass --data (the ImageNet sample lives in ../shared/data/imagenet-sample).")
    info = probe(shipped=True, data=val_photos(args.data, args.images), out=args.out, max_images=args.images,
                 device=args.device)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for f in [*(n for names in info["files"].values() for n in names if n.endswith(".csv")), "probe.json"]:
            shutil.copy(args.out / f, args.keep / f)
        print(f"kept the CSV files and probe.json in {args.keep}")
    if args.figures:
        s = sample_images_dir()
        bundled = args.out.with_name(args.out.name + "-bundled")
        probe(shipped=True, data=[s / p for p in BUNDLED_COLOUR], out=bundled, device=args.device)
        for src, dst in FIGURES.items():
            copy_figure(bundled / src, args.figures / dst)
        print(f"figures of the bundled photos in {args.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
