"""Optimisation-based inversion against the decoders, per stage: pixel and feature fidelity, s/image.

Two parts, both on efficientnet_lite0 with its real ImageNet weights and the decoders shipped with
featinv (trained on the 900 training photos of the imagenet-sample split):

1. ``--choose``: the defaults of `featinv invert`, chosen on *training-split* photos (never on the
   photos reported): a small grid of step sizes and TV weights, `optimize` at stage 1 and stage 4,
   scored by PSNR against the originals (finished grid points are reused: rerunning continues).
2. the table: on the first ``--images`` val photos of split.csv, per stage, the decoder, `refine`
   from it and `optimize` alone: PSNR, SSIM, feature error, seconds per image, and the signed
   changes of refine against the decoder.

    python bench/invert.py --choose --images 4 --steps 100
    python bench/invert.py --images 8 --steps 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "imagenet-sample"


def split_records(split: str, n: int, data: Path = DATA):
    from featinv.config import DataConfig
    from featinv.data import SkipLog, split_for_config

    cfg = DataConfig(data=str(data), split_file=str(Path(data) / "split.csv"))
    train, val = split_for_config(cfg, SkipLog())
    return (train if split == "train" else val)[:n]


def choose(args: argparse.Namespace) -> list[dict]:
    from featinv.backbones import FeatureExtractor
    from featinv.invert import InvertConfig, invert_images

    recs = split_records("train", args.images, args.data)
    rows = []
    for stage in [] if args.refine_only else args.stages:
        fe = FeatureExtractor("efficientnet_lite0", "imagenet", [stage]).eval().to(args.device)
        for lr in args.lrs:
            for tv in args.tvs:
                cfg = InvertConfig(steps=args.steps, lr=lr, tv_weight=tv)
                out = Path(args.out) / "choose" / f"{stage}-lr{lr}-tv{tv}"
                m = invert_images(fe, recs, out, "optimize", cfg, batch_size=args.batch_size, num_save=0,
                                  device=torch.device(args.device))
                rows.append({"stage": stage, "lr": lr, "tv_weight": tv, "psnr": m["psnr"], "ssim": m["ssim"],
                             "feature_error": m["feature_error_mean"]})
                print(json.dumps(rows[-1]), flush=True)
    rows += choose_refine(args, recs)
    return rows


def choose_refine(args: argparse.Namespace, recs) -> list[dict]:
    """`refine` from the shipped decoder of each of ``--refine-stages`` on the same training photos,
    per step size and TV weight."""
    import featinv
    from featinv.evaluate import evaluate_loader
    from featinv.invert import InvertConfig, invert_images
    from featinv.pretrained import shipped_decoders

    rows = []
    for stage in args.refine_stages:
        run = featinv.load_run(shipped_decoders()[stage], device=args.device)
        ev = evaluate_loader(run.extractor, run.decoder, run.loader(recs, 4, 0), recs, run.device,
                             feature_errors=True, precision="fp32")
        rows.append({"stage": stage, "method": "decoder", "psnr": ev.metrics["psnr"], "ssim": ev.metrics["ssim"],
                     "feature_error": ev.metrics["feature_error"]})
        print(json.dumps(rows[-1]), flush=True)
        for lr in args.refine_lrs:
            for tv in args.refine_tvs:
                cfg = InvertConfig(steps=args.steps, lr=lr, tv_weight=tv)
                out = Path(args.out) / "choose" / f"refine-{stage}-lr{lr}-tv{tv}"
                m = invert_images(run.extractor, recs, out, "refine", cfg, run.decoder, batch_size=args.batch_size,
                                  num_save=0, device=run.device)
                rows.append({"stage": stage, "method": "refine", "lr": lr, "tv_weight": tv, "psnr": m["psnr"],
                             "ssim": m["ssim"], "feature_error": m["feature_error_mean"]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(args: argparse.Namespace) -> list[dict]:
    import featinv
    from featinv.evaluate import evaluate_loader
    from featinv.invert import DEFAULT_LR, InvertConfig, invert_images
    from featinv.pretrained import shipped_decoders

    recs = split_records("val", args.images, args.data)
    cfg = InvertConfig(steps=args.steps, lr=args.lr)
    rows = []
    for stage, run_dir in shipped_decoders().items():
        run = featinv.load_run(run_dir, device=args.device)
        t = time.perf_counter()
        ev = evaluate_loader(run.extractor, run.decoder, run.loader(recs, args.batch_size, 0), recs,
                             run.device, feature_errors=True, precision="fp32")
        dec_s = (time.perf_counter() - t) / len(recs)
        row = {"stage": stage, "decoder_psnr": ev.metrics["psnr"], "decoder_ssim": ev.metrics["ssim"],
               "decoder_fe": ev.metrics["feature_error"], "decoder_s_per_image": dec_s}
        for method in ("refine", "optimize"):
            lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[method]
            out = Path(args.out) / "table" / f"{stage}-{method}-lr{lr:g}"  # finished ones are reused
            m = invert_images(run.extractor, recs, out, method, cfg, run.decoder if method == "refine" else None,
                              batch_size=args.batch_size, num_save=4, title=run.describe(), device=run.device)
            row.update({f"{method}_psnr": m["psnr"], f"{method}_ssim": m["ssim"],
                        f"{method}_fe": m["feature_error_mean"], f"{method}_s_per_image": m["seconds_per_image"]})
        row["refine_fe_change"] = row["refine_fe"] / row["decoder_fe"] - 1
        row["refine_psnr_change"] = row["refine_psnr"] - row["decoder_psnr"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--choose", action="store_true", help="part 1: the grid on training photos")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default="bench-out/invert")
    p.add_argument("--data", type=Path, default=DATA, help="the imagenet-sample folder (with split.csv)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the seconds per image are this device's)")
    p.add_argument("--lr", type=float, default=None, help="the table: one step size for both methods (default: each method's)")
    p.add_argument("--stages", nargs="+", default=["stage1", "stage4"], help="--choose: the stages of the grid")
    p.add_argument("--lrs", nargs="+", type=float, default=[0.02, 0.1], help="--choose: step sizes tried")
    p.add_argument("--tvs", nargs="+", type=float, default=[0.005, 0.05], help="--choose: TV weights tried")
    p.add_argument("--refine-stages", nargs="+", default=["stage1"], help="--choose: refine from these shipped decoders")
    p.add_argument("--refine-lrs", nargs="+", type=float, default=[0.002, 0.0005], help="--choose: refine's step sizes")
    p.add_argument("--refine-tvs", nargs="+", type=float, default=[0.05], help="--choose: refine's TV weights")
    p.add_argument("--refine-only", action="store_true", help="--choose: skip the optimize grid")
    args = p.parse_args(argv)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    load = os.getloadavg()[0]
    rows = choose(args) if args.choose else table(args)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
    print(f"efficientnet_lite0 imagenet; {args.images} photos; {args.steps} steps; {where}; "
          f"load average at start {load:.2f}")
    if not args.choose:
        print(f"{'stage':<7} {'decoder dB / FE':>17} {'refine dB / FE':>17} {'Δ dB':>6} {'Δ FE':>7} "
              f"{'optimize dB / FE':>18} {'s/img ref/opt':>14}")
        for r in rows:
            print(f"{r['stage']:<7} {r['decoder_psnr']:>8.2f} / {r['decoder_fe']:.3f} {r['refine_psnr']:>8.2f} / "
                  f"{r['refine_fe']:.3f} {r['refine_psnr_change']:>+6.2f} {100 * r['refine_fe_change']:>+6.0f}% "
                  f"{r['optimize_psnr']:>9.2f} / {r['optimize_fe']:.3f} "
                  f"{r['refine_s_per_image']:>6.1f}/{r['optimize_s_per_image']:.1f}")
    name = "choose.json" if args.choose else f"table{'' if args.lr is None else f'-lr{args.lr:g}'}.json"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from featinv.invert import InvertConfig

    settings = dataclasses.asdict(InvertConfig(steps=args.steps, lr=args.lr))
    from featinv.utils import machine_class

    info = {"rows": rows, "args": vars(args), "load": load, "settings": settings,
            "machine": machine_class(args.device), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    (Path(args.out) / name).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
