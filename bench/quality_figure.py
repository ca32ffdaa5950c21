"""The quality figure of docs/results.md: bench/quality.py's decoders on the bundled photos.

The decoders were trained on ImageNet photos (and others), which may not be redistributed; the figure shows
them reconstructing the CC0 photos bundled with featinv instead (never seen in training), so it
can live in the repository.

    python bench/quality_figure.py --runs bench-out/quality --out docs/figures/quality.png \
        --curves docs/figures/learning_curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from featinv.data import ImageDataset, find_images, sample_images_dir, to_float
from featinv.evaluate import load_run
from featinv.metrics import score
from featinv.rundir import RunDir
from featinv.figures import image_grid, save_figure, uint8_images
from featinv.report import learning_curves_figure, run_row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="bench-out/quality", help="bench/quality.py's --out")
    p.add_argument("--configs", nargs="+", default=["stride4", "stride8", "stride16", "stride32", "all"])
    p.add_argument("--images", type=int, default=4, help="bundled photos shown (default 4)")
    p.add_argument("--out", default="docs/figures/quality.png")
    p.add_argument("--curves", default=None, help="also write the runs' learning curves (val PSNR per epoch) here")
    args = p.parse_args(argv)

    recs = find_images(sample_images_dir() / "val").records + find_images(sample_images_dir() / "train").records
    recs = recs[: args.images]
    ds = ImageDataset(recs, train=False)
    xf = to_float(torch.stack([ds[i]["image"] for i in range(len(recs))]), torch.device("cpu"))
    titles, columns, labels, seen = [], [], [], 0
    for name in args.configs:
        path = Path(args.runs) / name
        if not RunDir(path).summary_path.is_file():
            continue
        run = load_run(path, device="cpu")
        with torch.no_grad():
            y = run.reconstruct(xf).float().clamp(0, 1)
        s = score(y, xf)
        summary = RunDir(path).read_summary()
        seen = max(seen, summary.get("train_images") or 0)
        titles.append(f"{name} ({'+'.join(summary['layers'])})")
        columns.append(uint8_images(y))
        labels.append([f"{float(a):.1f} dB / {float(b):.2f}" for a, b in zip(s["psnr"], s["ssim"])])
    fig = image_grid(uint8_images(xf), titles, columns, labels,
                     f"decoders trained on {seen:,} photos (efficientnet_lite0 features), on unseen bundled CC0 photos")
    save_figure(fig, Path(args.out))
    print(f"wrote {args.out}")
    if args.curves:
        runs = [Path(args.runs) / n for n in args.configs if RunDir(Path(args.runs) / n).summary_path.is_file()]
        save_figure(learning_curves_figure(runs, [run_row(d) for d in runs]), Path(args.curves))
        print(f"wrote {args.curves}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
