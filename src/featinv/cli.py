"""`featinv <command>`: parse arguments, call the package's functions. No logic lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .utils import FeatinvError

log = logging.getLogger("featinv")


def _add_run_flags(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """Data, model and training flags shared by `train` and `sweep`."""
    p.add_argument("--data", help="image folder (ImageFolder tree or flat, searched recursively)")
    p.add_argument("--val-data", help="separate validation folder (default: a hash split of --data)")
    p.add_argument("--val-fraction", type=float, help="share of --data held out for validation (default 0.1)")
    p.add_argument("--split-file", help="CSV with columns file,split (train/val): a fixed split of --data")
    p.add_argument("--backbone", help="backbone name (default resnet50; see `featinv backbones`)")
    if sweep:
        p.add_argument("--weights", nargs="+", default=["imagenet"],
                       help="one run per weights source: imagenet, random, or state-dict paths (default imagenet)")
    else:
        p.add_argument("--weights", help="imagenet (default), random, or a path to a state-dict file")
        p.add_argument("--layers", nargs="+", help="taps to decode from (default: layer1 layer2 layer3 layer4)")
    from .config import DataConfig, DecoderConfig, LossConfig, TrainConfig
    from .train import SCHEDULES
    from .decoders import FUSIONS, NORMS, UPSAMPLERS

    dec, tr = DecoderConfig(), TrainConfig()
    p.add_argument("--decoder", help=f"decoder: ladder, pyramid (the previous default) or seed (the original's "
                   f"baseline) (default {dec.name})")
    p.add_argument("--width", type=int, help=f"channels of the decoder's path; ladder: at stride 4, doubling with "
                   f"the stride (default {dec.width})")
    p.add_argument("--max-width", type=int, help=f"ladder: cap on a path's channels (default {dec.max_width})")
    p.add_argument("--blocks", type=int, help=f"residual blocks; ladder: at each tap's scale, pyramid: at the finest "
                   f"(default {dec.blocks})")
    p.add_argument("--upsample", choices=UPSAMPLERS, help=f"x2 up-sampling: resize (bilinear + conv), pixelshuffle "
                   f"(ICNR), convtranspose (pyramid only; leaves a checkerboard) (default {dec.upsample})")
    p.add_argument("--fusion", choices=FUSIONS, help=f"pyramid: how coarser maps join finer ones (default {dec.fusion})")
    p.add_argument("--norm", choices=NORMS, help=f"normalization after the decoder's convolutions (default {dec.norm})")
    terms = ", ".join(f"{k}={v:g}" for k, v in vars(LossConfig()).items() if isinstance(v, float) and v > 0)
    p.add_argument("--loss", nargs="+", metavar="TERM=WEIGHT",
                   help=f"loss terms and weights, e.g. mse=1 ssim=0.5 perceptual=0.1; terms: mse, l1, ssim, ms_ssim, "
                   f"perceptual; unnamed terms get weight 0 (default {terms})")
    p.add_argument("--perceptual-backbone", metavar="NAME[:WEIGHTS]",
                   help="backbone of the perceptual loss (default: the run's own, frozen)")
    p.add_argument("--perceptual-layers", nargs="+", help="taps of the perceptual loss (default: its stage1 stage2)")
    p.add_argument("--epochs", type=int, help=f"epochs (default {tr.epochs}; with --minutes, at most this many)")
    p.add_argument("--minutes", type=float,
                   help="time budget: stop when the training passes (validation excluded) have taken this long; "
                   "the learning-rate schedule follows the budget")
    p.add_argument("--batch-size", type=int, help="batch size (default 16)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule after warm-up: plateau (constant until val PSNR stops rising, then a "
                   "short decay and stop: the convergence rule), cosine (over --epochs or --minutes) or constant "
                   f"(default {tr.schedule})")
    p.add_argument("--plateau-epochs", type=int,
                   help=f"plateau: compare the best val PSNR of the last N epochs with the best before (default {tr.plateau_epochs})")
    p.add_argument("--plateau-db", type=float,
                   help=f"plateau: a gain below this many dB is a plateau (default {tr.plateau_db:g})")
    p.add_argument("--decay-epochs", type=int, help=f"plateau: epochs of the final decay (default {tr.decay_epochs})")
    p.add_argument("--warmup-epochs", type=float, help=f"linear warm-up length in epochs (default {tr.warmup_epochs:g})")
    p.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {tr.weight_decay:g})")
    p.add_argument("--grad-clip", type=float, help=f"clip the gradient norm to this; 0 turns it off (default {tr.grad_clip:g})")
    p.add_argument("--ema", type=float,
                   help=f"decay of an exponential moving average of the decoder weights, which are then the ones "
                   f"scored and saved; 0 turns it off (default {tr.ema:g})")
    p.add_argument("--patience", type=int,
                   help=f"stop after this many epochs without a better val PSNR and keep the best weights; "
                   f"0 turns it off (default {tr.patience})")
    p.add_argument("--seed", type=int, help="seed for data order, crops and initial weights (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--max-images", type=int, help="use at most N training images (quick runs)")
    p.add_argument("--no-augment", action="store_true", help="train on center crops (no random crop/flip)")
    p.add_argument("--crop-scale", type=float,
                   help="smallest area fraction of a random-resized training crop; 1 = plain random crops "
                   f"(default {DataConfig().crop_scale:g})")
    p.add_argument("--color-jitter", type=float,
                   help=f"brightness/contrast/saturation jitter of training images (default {DataConfig().color_jitter:g})")
    p.add_argument("--extra-data", nargs="+", metavar="DIR",
                   help="more image folders or prepared caches, every image of them used for training")
    p.add_argument("--cache-features", action="store_true",
                   help="with --no-augment: store the frozen backbone's outputs (float16, in RUN/feature_cache) "
                   "during epoch 1 and train later epochs from them; the disk space is checked first")
    p.add_argument("--workers", type=int, help="data-loader workers (default: from the CPU count)")
    p.add_argument("--num-save", type=int, help="validation pairs saved at the end (default 8)")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between mid-epoch checkpoints (default 200; 0: epoch ends only)")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error, not a skip")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast precision (default auto: bf16 on GPUs and CPUs with native bf16, fp16 on older GPUs, else fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder (opt-in)")
    p.add_argument("--config", help="YAML config file (a run's config.yaml works)")


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a decoder from backbone features to images",
        description="Train a decoder that maps frozen backbone features back to the [0,1] RGB image. "
        "Flags override --config; unset flags keep the config file's (or the default) values.",
    )
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    _add_run_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--break-lock", action="store_true",
                   help="take over --out although a process on another host holds its lock (that run must be gone)")


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="the depth study: one decoder per layer set (and weights), same budget",
        description="Train one decoder per (backbone:weights, layer set) with the same budget and seed, "
        "score each on the same held-out images, and write summary.{csv,md,json}, figures/ and "
        "report.html. Running the same command again skips finished configurations.",
    )
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument("--layer-sets", nargs="+", default=None,
                   help="layer sets: stage or layer names, a+b for several, or all "
                   "(default: stage1 stage2 stage3 stage4 all)")
    p.add_argument("--models", nargs="+",
                   help="BACKBONE:WEIGHTS pairs, e.g. efficientnet_lite0:imagenet resnet50:random "
                   "(instead of --backbone with --weights)")
    p.add_argument("--no-semantic", action="store_true", help="skip the classifier agreement on reconstructions")
    _add_run_flags(p, sweep=True)


def _set_loss_weights(cfg, items: Sequence[str]) -> None:
    """``--loss mse=1 ssim=0.5``: the named terms get these weights, the others 0."""
    from .losses import TERMS

    weights = dict.fromkeys(TERMS, 0.0)
    for item in items:
        term, sep, value = item.partition("=")
        try:
            w = float(value) if sep else 1.0
        except ValueError:
            w = -1.0
        if term not in TERMS or w < 0:
            raise FeatinvError(f"--loss takes TERM=WEIGHT with TERM one of {', '.join(TERMS)} and WEIGHT >= 0; got {item!r}.")
        weights[term] = w
    for term, w in weights.items():
        setattr(cfg.loss, term, w)


def _build_config(args: argparse.Namespace):
    from .config import RunConfig, load_config

    run_cfg = Path(args.out) / "config.yaml"
    resume, layers = getattr(args, "resume", False), getattr(args, "layers", None)
    if resume:
        if not run_cfg.is_file():
            raise FeatinvError(f"--resume: {args.out} holds no run to resume; drop --resume to start one.")
        cfg = load_config(run_cfg)
    elif args.config:
        cfg = load_config(args.config)
    else:
        cfg = RunConfig()
    overrides = {
        ("data", "data"): args.data,
        ("data", "val_data"): args.val_data,
        ("data", "val_fraction"): args.val_fraction,
        ("data", "split_file"): args.split_file,
        ("data", "max_images"): args.max_images,
        ("data", "num_workers"): args.workers,
        ("backbone", "name"): args.backbone,
        ("backbone", "weights"): args.weights if isinstance(args.weights, str) else None,
        ("backbone", "layers"): layers,
        ("decoder", "name"): args.decoder,
        ("decoder", "width"): args.width,
        ("decoder", "max_width"): args.max_width,
        ("data", "crop_scale"): args.crop_scale,
        ("data", "color_jitter"): args.color_jitter,
        ("data", "extra_data"): [str(Path(e).expanduser().resolve()) for e in args.extra_data] if args.extra_data else None,
        ("train", "plateau_epochs"): args.plateau_epochs,
        ("train", "plateau_db"): args.plateau_db,
        ("train", "decay_epochs"): args.decay_epochs,
        ("decoder", "blocks"): args.blocks,
        ("decoder", "upsample"): args.upsample,
        ("decoder", "fusion"): args.fusion,
        ("decoder", "norm"): args.norm,
        ("loss", "perceptual_layers"): args.perceptual_layers,
        ("train", "warmup_epochs"): args.warmup_epochs,
        ("train", "weight_decay"): args.weight_decay,
        ("train", "grad_clip"): args.grad_clip,
        ("train", "ema"): args.ema,
        ("train", "patience"): args.patience,
        ("train", "epochs"): args.epochs,
        ("train", "minutes"): args.minutes,
        ("train", "batch_size"): args.batch_size,
        ("train", "lr"): args.lr,
        ("train", "schedule"): args.schedule,
        ("train", "seed"): args.seed,
        ("train", "device"): args.device,
        ("train", "num_save"): args.num_save,
        ("train", "checkpoint_every"): args.checkpoint_every,
        ("train", "precision"): args.precision,
    }
    if args.no_augment:
        overrides[("data", "augment")] = False
    if args.strict:
        overrides[("data", "strict")] = True
    if args.compile:
        overrides[("train", "compile")] = True
    if args.cache_features:
        overrides[("train", "cache_features")] = True
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(cfg, section), key, value)
    if args.loss:
        _set_loss_weights(cfg, args.loss)
    if args.perceptual_backbone:
        name, _, weights = args.perceptual_backbone.partition(":")
        if weights not in ("", "imagenet", "random"):
            weights = str(Path(weights).expanduser().resolve())
        cfg.loss.perceptual_backbone, cfg.loss.perceptual_weights = name, weights or "imagenet"
    # Paths are stored absolute so the run directory alone can find its data again.
    for key in ("data", "val_data", "split_file"):
        value = getattr(cfg.data, key)
        if value:
            setattr(cfg.data, key, str(Path(value).expanduser().resolve()))
    w = cfg.backbone.weights
    if w not in ("imagenet", "random"):
        cfg.backbone.weights = str(Path(w).expanduser().resolve())
    # Without a flag the ResNet names stay the default; other backbones default to their own taps.
    if args.backbone and not layers and not resume and not args.config:
        from .backbones import get_spec

        cfg.backbone.layers = get_spec(cfg.backbone.name).default_layers
    return cfg


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train

    train(_build_config(args), args.out, resume=args.resume, command=args.command_line, break_lock=args.break_lock)


def cmd_sweep(args: argparse.Namespace) -> None:
    from .sweep import DEFAULT_LAYER_SETS, parse_models, run_sweep

    base = _build_config(args)
    models = parse_models(args.models, base.backbone.name, args.weights)
    models = [(b, w if w in ("imagenet", "random") else str(Path(w).expanduser().resolve())) for b, w in models]
    rows = run_sweep(base, args.out, args.layer_sets or DEFAULT_LAYER_SETS, models, semantic=not args.no_semantic,
                     command=args.command_line)
    from .report import markdown_table

    print(markdown_table(rows))
    print(f"tables, figures and report.html in {args.out}")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import build_report

    rows = build_report([Path(p) for p in args.paths], Path(args.out), title=args.title,
                        figures_dir=Path(args.figures) if args.figures else None,
                        info={"report command": args.command_line})
    print(f"wrote {args.out} ({len(rows)} configurations)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_run, load_run

    run = load_run(args.run, device=args.device)
    m = evaluate_run(run, data=args.data, out=args.out, num_save=args.num_save, batch_size=args.batch_size)
    out = Path(args.out) if args.out else Path(args.run) / "evaluation"
    print(f"{m['n_images']} images: MSE {m['mse']:.5f}  PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  → {out}")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from .evaluate import reconstruct_files

    files = reconstruct_files(args.run, args.images, args.out)
    print(f"wrote {len(files)} files to {args.out}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from .cache import prepare

    info = prepare(args.data, args.out, size=args.size, labels=args.labels, workers=args.workers)
    print(f"{sum(info.ok)} images ({info.n - sum(info.ok)} skipped) in {args.out}; use it as --data {args.out}")


def cmd_backbones(args: argparse.Namespace) -> None:
    from .backbones import describe_backbones

    rows = describe_backbones(args.image_size)
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        present = "ImageNet weights present" if row["weights_present"] else "ImageNet weights not on this machine"
        print(f"{row['name']}  ({present})")
        if "error" in row:
            print(f"    {row['error']}")
        for t in row["taps"]:
            alias = f" (alias {t['alias']})" if t["alias"] else ""
            print(f"    {t['name']}{alias:<16} node {t['node']:<12} {'×'.join(map(str, t['shape']))}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="featinv",
        allow_abbrev=False,  # `--epoch` silently meaning `--epochs` is a trap once flags multiply
        description="Reconstruct images from the intermediate features of a frozen network, "
        "and measure what each depth keeps (MSE, PSNR, SSIM).",
    )
    parser.add_argument("--version", action="version", version=f"featinv {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser = _no_abbrev(sub.add_parser)  # type: ignore[method-assign]
    _train_parser(sub)
    _sweep_parser(sub)

    p = sub.add_parser("evaluate", help="score a trained run on a folder of images",
                       description="Reconstruct and score images with a run's decoder; writes metrics.json, "
                       "per_image.csv and original/reconstruction pairs.")
    p.add_argument("run", help="run directory written by `featinv train`")
    p.add_argument("--data", help="image folder to score (default: the run's own validation split)")
    p.add_argument("--out", help="output folder (default RUN/evaluation)")
    p.add_argument("--num-save", type=int, default=8, help="pairs to save (default 8)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the run's)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")

    p = sub.add_parser("reconstruct", help="reconstruct given image files with a trained run",
                       description="Center-crop each image as in training and write original_* and "
                       "reconstruction_* PNGs.")
    p.add_argument("run", help="run directory written by `featinv train`")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("prepare", help="decode images once into a fast cache (folder or ImageNet val tar)",
                       description="Decode, resize (short side 256) and center-crop every image once into a "
                       "uint8 array file that training and evaluation read memory-mapped. Reads an image "
                       "folder or a tar such as ILSVRC2012_img_val.tar directly (streamed, never extracted). "
                       "Interrupted runs resume.")
    p.add_argument("--data", required=True, help="image folder or tar file")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--size", type=int, default=224,
                   help="stored crop size (default 224; 256 keeps room for random-crop augmentation)")
    p.add_argument("--labels", help="ILSVRC2012_validation_ground_truth.txt: devkit ids mapped to class indices")
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (default: from the CPU count)")

    p = sub.add_parser("report", help="build the HTML report from run or sweep directories",
                       description="A self-contained HTML page (figures embedded) with the table, metrics "
                       "against depth, reconstructions and error maps of the given runs or sweeps.")
    p.add_argument("paths", nargs="+", help="run directories and/or sweep directories")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--title", default="featinv report", help="page title")
    p.add_argument("--figures", metavar="DIR", help="also write the figures as PNG files into DIR")

    p = sub.add_parser("backbones", help="list backbones, their taps and whether weights are present",
                       description="List every backbone with its stage taps (shapes at --image-size) and "
                       "whether its ImageNet weights are on this machine. --layers also takes raw graph "
                       "node names, e.g. layer3.5.relu_2.")
    p.add_argument("--image-size", type=int, default=224, help="input size for the shapes (default 224)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("demo", help="what each depth keeps, and the pipeline end to end, on bundled photos (CPU, about a minute)",
                       description="(1) The decoders shipped with featinv (one per stage of EfficientNet-Lite0, "
                       "ImageNet weights) reconstruct 3 bundled held-out photos: depths.png and a table. (2) A "
                       "decoder trained for --epochs on 9 bundled photos, evaluated on the 3 held-out ones. Uses "
                       "ResNet-50's ImageNet weights if present, else EfficientNet-Lite0's (the offline extra), "
                       "else random weights, saying so loudly.")
    p.add_argument("--out", default="featinv-demo", help="output folder (default ./featinv-demo)")
    p.add_argument("--epochs", type=int, default=15, help="epochs of the short training run (default 15)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    return parser


SUBPARSERS: dict[str, argparse.ArgumentParser] = {}


def _no_abbrev(add_parser):
    """``add_parser`` with prefix matching off, remembering each sub-command's parser."""

    def add(name: str, **kw):
        SUBPARSERS[name] = add_parser(name, allow_abbrev=False, **kw)
        return SUBPARSERS[name]

    return add


COMMANDS = {
    "train": cmd_train,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "prepare": cmd_prepare,
    "evaluate": cmd_evaluate,
    "reconstruct": cmd_reconstruct,
    "backbones": cmd_backbones,
    "demo": cmd_demo,
}


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse; an unknown flag is reported by its sub-command's parser, with the closest flag."""
    import difflib

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = SUBPARSERS[args.command]
        flags = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
        unknown = next((x for x in extra if x.startswith("-")), extra[0]).split("=")[0]
        close = difflib.get_close_matches(unknown, flags, n=1)
        sub.error(f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {close[0]}?)" if close else ""))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    import shlex

    args = _parse(argv)
    args.command_line = shlex.join(["featinv", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    from .train import TrainingInterrupted

    out = getattr(args, "out", None)
    try:
        if args.command != "report" and out and Path(out).exists() and not Path(out).is_dir():
            raise FeatinvError(f"--out {out} is a file, not a folder; choose another --out.")
        COMMANDS[args.command](args)
    except BrokenPipeError:
        # The reader went away (`featinv backbones --json | head`): not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TrainingInterrupted as e:
        print(f"featinv: {e}", file=sys.stderr)
        return e.exit_code
    except FeatinvError as e:
        print(f"featinv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featinv: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
