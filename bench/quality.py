"""Reconstruction quality on a fixed budget: every row of the table from one run.

Trains one decoder per configuration with featinv's default recipe (the package defaults: the
decoder, loss and schedule a plain `featinv train` uses) on the train split, for the same budget
(`--minutes` of training passes, or `--epochs`), and scores the val split and the first
`--train-eval` train images (center crops, so overfitting shows). The reference lines (bicubic
thumbnails at each stride, the mean training image) are computed on the same val images here.

    python bench/quality.py --minutes 10            # the README's table
    python bench/quality.py --configs all seed --epochs 2 --max-images 64   # a quick look

Configurations: `all` (every stage), `stride4`, `stride8`, `stride16`, `stride32` (one stage),
`seed` (the original design: all stages concatenated at 7×7, the `seed` decoder); `--layers`
adds one more of your choosing. `--set decoder.upsample=resize train.ema=0.999 ...` changes the
recipe of every configuration (config.yaml keys): how the defaults were compared. Finished configurations in `--out` are reused when their
settings match, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import yaml

from featinv.backbones import get_spec
from featinv.config import RunConfig
from featinv.data import ImageDataset, SkipLog, make_loader, split_for_config, to_float
from featinv.evaluate import evaluate_loader, load_run
from featinv.metrics import MeanAccumulator, bicubic_thumbnail, score
from featinv.report import run_completed
from featinv.sweep import check_same_settings
from featinv.train import train

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "imagenet-sample"
CONFIGS = ["all", "stride4", "stride8", "stride16", "stride32", "seed"]
DEFAULT_CONFIGS = ["all", "stride4", "stride8", "stride16", "seed"]


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
    cfg.backbone.name, cfg.backbone.weights, cfg.backbone.layers = args.backbone, args.weights, layers
    if name == "seed":
        cfg.decoder.name = "seed"
    cfg.train.epochs = args.epochs
    cfg.train.minutes = args.minutes
    cfg.train.device = args.device
    cfg.train.num_save = 8
    cfg.notes = [f"bench/quality.py configuration {name}"]
    if args.set:
        d = cfg.to_dict()
        for item in args.set:
            key, sep, value = item.partition("=")
            section, _, field = key.partition(".")
            if not sep or not isinstance(d.get(section), dict) or field not in d[section]:
                raise SystemExit(f"--set takes SECTION.KEY=VALUE with a key of config.yaml, got {item!r}.")
            if section == "decoder" and name == "seed":
                continue  # the seed decoder has no knobs
            d[section][field] = yaml.safe_load(value)
        cfg = RunConfig.from_dict(d)
        cfg.notes.append("with " + " ".join(args.set))
    return cfg


def train_or_reuse(cfg: RunConfig, out: Path) -> dict:
    """A finished run with exactly these settings is reused; anything else in ``out`` is refused."""
    if run_completed(out):
        check_same_settings(out, cfg, ignored=frozenset())
        logging.info("reusing %s", out)
        return json.loads((out / "summary.json").read_text())
    if (out / "config.yaml").is_file():
        raise SystemExit(f"{out} holds an unfinished run; remove it or choose another --out.")
    return train(cfg, out)


def score_train_split(run_dir: Path, n: int) -> dict[str, float]:
    """Center crops of the first ``n`` training images, scored like the val split."""
    run = load_run(run_dir)
    train_recs, _ = split_for_config(run.config.data, SkipLog())
    recs = train_recs[:n]
    ev = evaluate_loader(run.extractor, run.decoder, run.loader(recs, 16), recs, run.device,
                         precision=run.precision, channels_last=run.config.train.channels_last, desc="train split")
    return ev.metrics


def references(cfg: RunConfig, mean_image: torch.Tensor) -> dict[str, dict[str, float]]:
    """Bicubic thumbnails at strides 4..32 and the mean training image, on the val split."""
    _, val_recs = split_for_config(cfg.data, SkipLog())
    loader = make_loader(ImageDataset(val_recs, cfg.data.image_size, cfg.data.resize, train=False), 16, shuffle=False)
    acc = {k: MeanAccumulator() for k in ("bicubic_x4", "bicubic_x8", "bicubic_x16", "bicubic_x32", "mean_image")}
    for batch in loader:
        if "image" not in batch:
            continue
        x = to_float(batch["image"], torch.device("cpu"))
        for stride in (4, 8, 16, 32):
            acc[f"bicubic_x{stride}"].add(score(bicubic_thumbnail(x, stride), x))
        acc["mean_image"].add(score(mean_image.expand_as(x).contiguous(), x))
    return {k: a.result() for k, a in acc.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="image folder or prepared cache (default: the ImageNet sample)")
    p.add_argument("--split-file", default=None, help="file,split CSV (default: split.csv in --data's folder if present)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=CONFIGS)
    p.add_argument("--layers", nargs="+", help="one more configuration with these taps")
    p.add_argument("--minutes", type=float, default=None, help="training-pass minutes per configuration")
    p.add_argument("--epochs", type=int, default=None, help="epochs per configuration (an upper bound with --minutes)")
    p.add_argument("--max-images", type=int, default=None, help="cap on training images (quick looks)")
    p.add_argument("--train-eval", type=int, default=100, help="training images scored for the train-split columns")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", nargs="+", metavar="SECTION.KEY=VALUE",
                   help="change the recipe for every configuration, e.g. decoder.upsample=resize loss.l1=1 loss.mse=0")
    p.add_argument("--out", default="bench-out/quality")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.minutes is None and args.epochs is None:
        args.minutes = 10.0
    if args.epochs is None:
        args.epochs = 1000  # the time budget ends training
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
        s = train_or_reuse(cfg, out / name)
        tr = score_train_split(out / name, args.train_eval)
        # the seed decoder resizes every map to the coarsest one's size first
        stride = (max if name == "seed" else min)(s["strides"].values())
        rows.append({
            "config": name, "decoder": s["decoder"], "layers": "+".join(layers), "stride": stride,
            "val_psnr": s["val"]["psnr"], "val_ssim": s["val"]["ssim"], "train_psnr": tr["psnr"], "train_ssim": tr["ssim"],
            "epochs": s["epochs_run"], "train_minutes": s["train_pass_s"] / 60, "params": s["decoder_parameters"],
            "val_images": s["val_images"], "train_images": s["train_images"], "device": s["device"],
            "precision": s["precision"],
        })
    mean_image = None
    last_ckpt = torch.load(out / configs[0][0] / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    mean_image = (last_ckpt["mean_sum"] / max(1, last_ckpt["mean_n"])).float()
    refs = references(run_config(configs[0][0], configs[0][1], args), mean_image)

    budget = f"{args.minutes:g} min of training passes" if args.minutes else f"{args.epochs} epochs"
    lines = [
        f"{args.backbone} ({args.weights}), {rows[0]['train_images']} train / {rows[0]['val_images']} val images, "
        f"{budget} per configuration, {rows[0]['device']} ({rows[0]['precision']})",
        "",
        "| configuration | decoder | layers | stride | val PSNR (dB) | val SSIM | train PSNR (dB) | train SSIM | epochs | minutes | parameters |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['decoder']} | {r['layers']} | {r['stride']} | {r['val_psnr']:.2f} | {r['val_ssim']:.3f} | "
            f"{r['train_psnr']:.2f} | {r['train_ssim']:.3f} | {r['epochs']} | {r['train_minutes']:.1f} | {r['params'] / 1e6:.2f}M |"
        )
    for k, v in refs.items():
        label = f"reference: bicubic ×{k[9:]} thumbnail" if k.startswith("bicubic") else "reference: mean training image"
        lines.append(f"| {label} | | | | {v['psnr']:.2f} | {v['ssim']:.3f} | | | | | |")
    lines.append("")
    lines.append(f"total wall time {(time.perf_counter() - t0) / 60:.1f} min")
    table = "\n".join(lines)
    print(table)
    (out / "quality.md").write_text(table + "\n", encoding="utf-8")
    (out / "quality.json").write_text(json.dumps({"rows": rows, "references": refs, "args": vars(args)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from featinv.utils import FeatinvError

    try:
        sys.exit(main())
    except FeatinvError as e:  # a user's mistake: one line, not a traceback
        sys.exit(f"error: {e}")
