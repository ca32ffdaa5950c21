"""Reconstruction quality on a fixed budget: every row of the table from one run.

Trains one decoder per configuration with featinv's default recipe (the package defaults: the
decoder, loss and schedule a plain `featinv train` uses) on the train split, for the same budget
(`--minutes` of training passes, or `--epochs`), and scores the val split and the first
`--train-eval` train images (center crops, so overfitting shows). The reference lines (bicubic
thumbnails at each stride, the mean training image) are computed on the same val images here.

    python bench/quality.py --minutes 20            # the depth study of docs/results.md
    python bench/quality.py --configs all seed --epochs 2 --max-images 64   # a quick look

Configurations: `all` (every stage), `stride4`, `stride8`, `stride16`, `stride32` (one stage),
`seed` (the original design: all stages concatenated at 7×7, the `seed` decoder); `--layers`
adds one more of your choosing. `--set decoder.upsample=resize train.ema=0.999 ...` changes the
recipe of every configuration (config.yaml keys): how the defaults were compared. Finished configurations in `--out` are reused when their
settings match, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import logging
import sys
import time
from pathlib import Path

import torch

from featinv.backbones import get_spec
from featinv.cli import apply_set
from featinv.config import RunConfig
from featinv.data import ImageDataset, SkipLog, find_images, make_loader, split_for_config, to_float, usable_records
from featinv.evaluate import evaluate_run
from featinv.metrics import MeanAccumulator, bicubic_thumbnail, score
from featinv.rundir import RunDir
from featinv.sweep import check_same_settings
from featinv.training import train

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "imagenet-sample"
CONFIGS = ["all", "stride4", "stride8", "stride16", "stride32", "seed"]
DEFAULT_CONFIGS = ["all", "stride4", "stride8", "stride16", "stride32"]
DEFAULT_TEST = HERE.parents[1] / "shared" / "data" / "bsds500" / "test"


def layers_for(config: str, backbone: str) -> list[str]:
    stages = get_spec(backbone).default_layers  # stride 4, 8, 16, 32
    if config in ("all", "seed"):
        return list(stages)
    return [stages[{"stride4": 0, "stride8": 1, "stride16": 2, "stride32": 3}[config]]]


def run_config(name: str, layers: list[str], args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig()  # the package's default recipe
    cfg.data.data = str(Path(args.data).resolve())
    cfg.data.split_file = str(Path(args.split_file).resolve()) if args.split_file else None
    cfg.data.max_images = args.max_images
    cfg.data.extra_data = [str(Path(e).resolve()) for e in args.extra_data]
    cfg.backbone.name, cfg.backbone.weights, cfg.backbone.layers = args.backbone, args.weights, layers
    if name == "seed":
        cfg.decoder.name = "seed"
    cfg.train.epochs = args.epochs
    cfg.train.minutes = args.minutes
    cfg.train.device = args.device
    cfg.train.num_save = 8
    cfg.notes = [f"bench/quality.py configuration {name}"]
    if args.set:
        # the seed decoder has no knobs: decoder settings apply to the other configurations
        items = [i for i in args.set if not (name == "seed" and i.startswith("decoder."))]
        cfg = apply_set(cfg, items)
        cfg.notes.append("with " + " ".join(args.set))
    return cfg


LOAD_FILE = "bench_load.json"  # the load average when the run started, kept for the rows that reuse it


def train_or_reuse(cfg: RunConfig, out: Path, load: float | None = None) -> dict:
    """A finished run with exactly these settings is reused; anything else in ``out`` is refused.
    A new run records ``load`` (the load average at its start; default: now) beside it."""
    load = os.getloadavg()[0] if load is None else load
    run = RunDir(out)
    if run.completed():
        check_same_settings(out, cfg, ignored=frozenset())
        logging.info("reusing %s", out)
        return run.read_summary()
    if run.has_config():
        raise SystemExit(f"{out} holds an unfinished run; remove it or choose another --out.")
    summary = train(cfg, out)
    (out / LOAD_FILE).write_text(json.dumps({"load_at_start": round(load, 2)}))
    return summary


def load_at_start(out: Path) -> float | None:
    """The load average recorded when the run in ``out`` started (None for runs from before it was kept)."""
    f = out / LOAD_FILE
    return json.loads(f.read_text())["load_at_start"] if f.is_file() else None


def references(cfg: RunConfig, mean_image: torch.Tensor, data: str | None = None) -> dict[str, dict[str, float]]:
    """Bicubic thumbnails at strides 4..32 and the mean training image, on the val split
    (or on every image of ``data``), per image then averaged."""
    if data is None:
        _, recs = split_for_config(cfg.data, SkipLog())
    else:
        recs = usable_records(find_images(data), SkipLog())
    loader = make_loader(ImageDataset(recs, cfg.data.image_size, cfg.data.resize, train=False), 16, shuffle=False)
    acc = {k: MeanAccumulator() for k in ("bicubic_x4", "bicubic_x8", "bicubic_x16", "bicubic_x32", "mean_image")}
    for batch in loader:
        if "image" not in batch:
            continue
        x = to_float(batch["image"], torch.device("cpu"))
        for stride in (4, 8, 16, 32):
            acc[f"bicubic_x{stride}"].add(score(bicubic_thumbnail(x, stride), x))
        acc["mean_image"].add(score(mean_image.expand_as(x).contiguous(), x))
    return {k: a.result() for k, a in acc.items()}


def per_image_psnr(path: Path) -> dict[str, float]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["file"]: float(r["psnr"]) for r in csv.DictReader(f)}


def paired_bootstrap(a: dict[str, float], b: dict[str, float], n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a − b over the images both scored, and its 95% bootstrap interval (images resampled)."""
    keys = sorted(set(a) & set(b))
    d = torch.tensor([a[k] - b[k] for k in keys], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    means = d[torch.randint(0, len(d), (n, len(d)), generator=g)].mean(1)
    return float(d.mean()), float(means.quantile(0.025)), float(means.quantile(0.975))


def test_domain(run_dir: Path, data: str) -> dict[str, float]:
    """The run's decoder on every image of ``data`` (another source: never used to choose recipes)."""
    out = run_dir / f"test-{Path(data).name}"
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    return evaluate_run(run_dir, data=data, out=out, num_save=4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="image folder or prepared cache (default: the ImageNet sample)")
    p.add_argument("--split-file", default=None, help="file,split CSV (default: split.csv in --data's folder if present)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=CONFIGS)
    p.add_argument("--layers", nargs="+", help="one more configuration with these taps")
    p.add_argument("--minutes", type=float, default=None,
                   help="cap on training-pass minutes per configuration (default 20; the plateau rule usually stops first)")
    p.add_argument("--epochs", type=int, default=None, help="cap on epochs per configuration")
    p.add_argument("--max-images", type=int, default=None, help="cap on training images (quick looks)")
    p.add_argument("--extra-data", nargs="+", default=[], metavar="DIR",
                   help="more training folders or caches (e.g. ../shared/data/extra-train)")
    p.add_argument("--test-data", default=str(DEFAULT_TEST) if DEFAULT_TEST.is_dir() else None,
                   help="a second test domain scored beside the val split (default: bsds500/test); 'none' skips it")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", nargs="+", metavar="SECTION.KEY=VALUE",
                   help="change the recipe for every configuration, e.g. decoder.upsample=resize loss.l1=1 loss.mse=0")
    p.add_argument("--out", default="bench-out/quality")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.minutes is None and args.epochs is None:
        args.minutes = 20.0
    if args.epochs is None:
        args.epochs = 1000  # the time budget (or the plateau rule) ends training
    if args.test_data in ("none", ""):
        args.test_data = None
    if args.split_file is None and (Path(args.data) / "split.csv").is_file():
        args.split_file = str(Path(args.data) / "split.csv")
    if not Path(args.data).exists():
        sys.exit(f"{args.data} does not exist; pass --data (the ImageNet sample lives in ../shared/data/imagenet-sample).")

    out = Path(args.out)
    configs = [(c, layers_for(c, args.backbone)) for c in args.configs]
    if args.layers:
        configs.append(("+".join(args.layers), list(args.layers)))
    t0 = time.perf_counter()
    rows = []
    for name, layers in configs:
        cfg = run_config(name, layers, args)
        s = train_or_reuse(cfg, out / name, load=os.getloadavg()[0])
        test = test_domain(out / name, args.test_data) if args.test_data else None
        # the seed decoder resizes every map to the coarsest one's size first
        stride = (max if name == "seed" else min)(s["strides"].values())
        tr = s["train_eval"]
        rows.append({
            "config": name, "decoder": s["decoder"], "layers": "+".join(layers), "stride": stride,
            "val_psnr": s["val"]["psnr"], "val_ssim": s["val"]["ssim"], "train_psnr": tr["psnr"], "train_ssim": tr["ssim"],
            "test_psnr": test["psnr"] if test else None, "test_ssim": test["ssim"] if test else None,
            "converged": s["converged"], "stop_reason": s["stop_reason"],
            "epochs": s["epochs_run"], "train_minutes": s["train_pass_s"] / 60, "params": s["decoder_parameters"],
            "images_per_s": s["train_images_per_s"],
            "val_images": s["val_images"], "train_images": s["train_images"], "device": s["device"],
            "precision": s["precision"], "load_at_start": load_at_start(out / name),
            "machine": s.get("machine"), "date": s.get("date"),
            "semantic": RunDir(out / name).read_semantics(),
        })
    mean_image = RunDir(out / configs[0][0]).mean_image()
    base = run_config(configs[0][0], configs[0][1], args)
    refs = references(base, mean_image)
    test_refs = references(base, mean_image, args.test_data) if args.test_data else {}

    budget = f"at most {args.minutes:g} min of training passes" if args.minutes else f"at most {args.epochs} epochs"
    extra = f" + {', '.join(Path(e).name for e in args.extra_data)}" if args.extra_data else ""
    test_name = Path(args.test_data).name if args.test_data else ""
    lines = [
        f"{args.backbone} ({args.weights}), {rows[0]['train_images']} train images (imagenet-sample train split{extra}) / "
        f"{rows[0]['val_images']} val images, {budget} per configuration (plateau rule), "
        f"{rows[0]['device']} ({rows[0]['precision']}); load average {os.getloadavg()[0]:.2f} at the end",
        "",
        f"| configuration | layers | stride | val PSNR (dB) | val SSIM | train PSNR | train SSIM | {test_name} PSNR | "
        f"{test_name} SSIM | converged | epochs | minutes | images/s | parameters | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v, d=2: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in rows:
        conv = {True: "yes", False: f"**no** ({r['stop_reason']})", None: "not checked"}[r["converged"]]
        lines.append(
            f"| {r['config']} ({r['decoder']}) | {r['layers']} | {r['stride']} | {r['val_psnr']:.2f} | {r['val_ssim']:.3f} | "
            f"{r['train_psnr']:.2f} | {r['train_ssim']:.3f} | {f(r['test_psnr'])} | {f(r['test_ssim'], 3)} | {conv} | "
            f"{r['epochs']} | {r['train_minutes']:.1f} | {f(r['images_per_s'], 1)} | {r['params'] / 1e6:.2f}M | {f(r['load_at_start'], 1)} |"
        )
    for k, v in refs.items():
        label = f"reference: bicubic ×{k[9:]} thumbnail" if k.startswith("bicubic") else "reference: mean training image"
        t = test_refs.get(k)
        lines.append(f"| {label} | | | {v['psnr']:.2f} | {v['ssim']:.3f} | | | {f(t and t['psnr'])} | {f(t and t['ssim'], 3)} | | | | | | |")
    names = [r["config"] for r in rows]
    diffs = [(a, b) for a, b in (("all", "stride4"), ("all", "stride8")) if a in names and b in names]
    if diffs:
        lines += ["", "Paired differences on the val images (per-image PSNR, 95% bootstrap interval over images):", ""]
    paired = []
    for a, b in diffs:
        m, lo, hi = paired_bootstrap(per_image_psnr(RunDir(out / a).per_image_path),
                                     per_image_psnr(RunDir(out / b).per_image_path))
        lines.append(f"- {a} − {b}: {m:+.2f} dB [{lo:+.2f}, {hi:+.2f}]")
        paired.append({"a": a, "b": b, "mean_db": m, "low_db": lo, "high_db": hi})
    lines.append("")
    lines.append(f"total wall time of this invocation {(time.perf_counter() - t0) / 60:.1f} min")
    table = "\n".join(lines)
    print(table)
    (out / "quality.md").write_text(table + "\n", encoding="utf-8")
    (out / "quality.json").write_text(json.dumps({"rows": rows, "references": refs, "test_references": test_refs,
                                                  "paired": paired, "args": vars(args)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from featinv.utils import FeatinvError

    try:
        sys.exit(main())
    except FeatinvError as e:  # a user's mistake: one line, not a traceback
        sys.exit(f"error: {e}")
