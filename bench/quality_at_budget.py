"""Quality at a fixed wall-clock budget: the original's design against featinv's default.

Both train for the same wall-clock minutes on the train split of the ImageNet sample with the
offline pretrained backbone (efficientnet_lite0 by default), and both are scored on the same val
center crops as [0,1] RGB images:

(a) the original project's loop: JPEG decode per step through torchvision's ImageFolder,
    num_workers=0, batch 8, fp32, forward hooks on the full network, maps concatenated at 7×7
    into the `seed` decoder, Adam 1e-3 at a constant rate, MSE against ImageNet-*normalized*
    targets (its fault, kept: this is what its users got);
(a') with --fixed-targets, the same loop with [0,1] targets: the engineering alone;
(c) `featinv train` with the package defaults and `--minutes` (its schedule follows the budget):
    the same run as bench/quality.py's `all` configuration, so `--c-run bench-out/quality/all`
    reuses one that bench/quality.py trained with the same budget.

The budget counts the training passes (data loading included, validation excluded) of each.

    python bench/quality_at_budget.py --minutes 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from original import OriginalLoop, featinv_backbone, image_folder  # noqa: E402
from quality import DEFAULT_DATA, layers_for, run_config, train_or_reuse  # noqa: E402

def original_loop(train_files: list[Path], backbone: str, weights: str, minutes: float, fixed_targets: bool,
                  device: torch.device, seed: int = 0) -> tuple[OriginalLoop, dict]:
    """Train (a) (bench/original.py) for ``minutes`` of training passes; returns it and what it did."""
    loop = featinv_backbone(backbone, weights, device, seed)
    loop.fixed = fixed_targets
    t = time.perf_counter()
    with image_folder(train_files) as root:
        info = loop.run(root, lambda _steps: time.perf_counter() - t >= minutes * 60)
    return loop, {**info, "train_s": time.perf_counter() - t}


def score_original(loop: OriginalLoop, cfg, device) -> dict[str, float]:
    from featinv.data import ImageDataset, SkipLog, make_loader, split_for_config, to_float
    from featinv.metrics import MeanAccumulator, score

    _, val_recs = split_for_config(cfg.data, SkipLog())
    loader = make_loader(ImageDataset(val_recs, 224, 256, train=False), 16, shuffle=False)
    acc = MeanAccumulator()
    loop.decoder.eval()
    for batch in loader:
        x = to_float(batch["image"], device)
        with torch.no_grad():
            acc.add(score(loop.reconstruct(x).clamp(0, 1), x))
    return acc.result()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the ImageNet sample folder (JPEGs + split.csv)")
    p.add_argument("--split-file", default=None, help="file,split CSV (default: split.csv in --data)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each (default 10)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--fixed-targets", action="store_true", help="also run (a'): the original loop with [0,1] targets")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="bench-out/quality_at_budget")
    p.add_argument("--cache", default=None,
                   help="(c) reads this `featinv prepare --size 256` cache of --data instead of the JPEGs")
    p.add_argument("--c-run", default=None, help="run directory for (c) (default OUT/c); reused if it matches")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from featinv.data import SkipLog, split_for_config
    from featinv.utils import resolve_device

    data = Path(args.data)
    split = args.split_file or str(data / "split.csv")
    if not data.is_dir() or not Path(split).is_file():
        sys.exit(f"{data} (a folder of JPEGs with split.csv) is missing; pass --data and --split-file.")
    device = resolve_device(args.device)
    out = Path(args.out)

    # (c): exactly bench/quality.py's `all` configuration at this budget (the package defaults)
    ns = argparse.Namespace(data=args.cache or str(data), split_file=split, max_images=None, backbone=args.backbone,
                            weights=args.weights, epochs=1000, minutes=args.minutes, device=args.device, set=None,
                            extra_data=[])
    cfg = run_config("all", layers_for("all", args.backbone), ns)
    from featinv.config import DataConfig

    # (a) reads the JPEGs themselves; both are scored on the val crops (c) sees
    train_recs, _ = split_for_config(DataConfig(data=str(data.resolve()), split_file=str(Path(split).resolve())), SkipLog())
    _, val_recs = split_for_config(cfg.data, SkipLog())
    train_files = [r.path for r in train_recs]

    rows = []
    variants = [("(a) original loop, normalized targets", False)]
    if args.fixed_targets:
        variants.append(("(a') original loop, [0,1] targets", True))
    for label, fixed in variants:
        logging.info("training %s for %g min", label, args.minutes)
        loop, info = original_loop(train_files, args.backbone, args.weights, args.minutes, fixed, device)
        m = score_original(loop, cfg, device)
        rows.append({"variant": label, **m, **info})
    logging.info("training (c) featinv default for %g min", args.minutes)
    s = train_or_reuse(cfg, Path(args.c_run) if args.c_run else out / "c")
    rows.append({"variant": f"(c) featinv default ({s['decoder']}, {s['precision']})", **s["val"], "epochs": s["epochs_run"],
                 "images": s["epochs_run"] * s["train_images"], "train_s": s["train_pass_s"]})

    print(f"{args.backbone} ({args.weights}); {len(train_recs)} train / {len(val_recs)} val images; "
          f"budget {args.minutes:g} min of training each; device {device}")
    print(f"{'variant':<52} {'val PSNR':>9} {'val SSIM':>9} {'epochs':>7} {'train s':>8}")
    for r in rows:
        print(f"{r['variant']:<52} {r['psnr']:>9.2f} {r['ssim']:>9.3f} {r['epochs']:>7} {r['train_s']:>8.0f}")
    c, a = rows[-1], rows[0]
    print(f"(c) - (a): {c['psnr'] - a['psnr']:+.2f} dB PSNR, {c['ssim'] - a['ssim']:+.3f} SSIM")
    if args.fixed_targets:
        print(f"(c) - (a'): {c['psnr'] - rows[1]['psnr']:+.2f} dB PSNR, {c['ssim'] - rows[1]['ssim']:+.3f} SSIM")
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_at_budget.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from featinv.utils import FeatinvError

    try:
        sys.exit(main())
    except FeatinvError as e:  # a user's mistake: one line, not a traceback
        sys.exit(f"error: {e}")
