"""The README's quality figure: bench/quality.py's decoders on the bundled photos.

The decoders were trained on ImageNet photos, which may not be redistributed; the figure shows
them reconstructing the CC0 photos bundled with featinv instead (never seen in training), so it
can live in the repository.

    python bench/quality_figure.py --runs bench-out/quality --out docs/figures/quality.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from featinv.data import ImageDataset, find_images, sample_images_dir, to_float
from featinv.evaluate import load_run
from featinv.metrics import score
from featinv.report import _pyplot


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="bench-out/quality", help="bench/quality.py's --out")
    p.add_argument("--configs", nargs="+", default=["all", "stride4", "stride8", "stride16", "seed"])
    p.add_argument("--images", type=int, default=4, help="bundled photos shown (default 4)")
    p.add_argument("--out", default="docs/figures/quality.png")
    args = p.parse_args(argv)

    recs = find_images(sample_images_dir() / "val").records + find_images(sample_images_dir() / "train").records
    recs = recs[: args.images]
    ds = ImageDataset(recs, train=False)
    x = torch.stack([ds[i]["image"] for i in range(len(recs))])
    runs = [(c, Path(args.runs) / c) for c in args.configs if (Path(args.runs) / c / "summary.json").is_file()]
    plt = _pyplot()
    fig, axes = plt.subplots(len(recs), 1 + len(runs), figsize=(2.1 * (1 + len(runs)), 2.2 * len(recs)), squeeze=False)
    xf = to_float(x, torch.device("cpu"))
    for i in range(len(recs)):
        axes[i][0].imshow(x[i].permute(1, 2, 0).numpy())
    axes[0][0].set_title("original (bundled, CC0)", fontsize=7)
    for j, (name, path) in enumerate(runs, start=1):
        run = load_run(path, device="cpu")
        y = run.reconstruct(xf).float().clamp(0, 1)
        s = score(y, xf)
        summary = json.loads((path / "summary.json").read_text())
        axes[0][j].set_title(f"{name}\n{summary['decoder']} decoder", fontsize=7)
        for i in range(len(recs)):
            axes[i][j].imshow(y[i].permute(1, 2, 0).numpy())
            axes[i][j].set_xlabel(f"{float(s['psnr'][i]):.1f} dB / {float(s['ssim'][i]):.2f}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("decoders trained on ImageNet photos (efficientnet_lite0 features), shown on unseen bundled photos", fontsize=9)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
