"""`featinv <command>`: parse arguments, call the package's functions. No logic lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from .utils import FeatinvError

log = logging.getLogger("featinv")


def _default_text(value: object) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None or value == "" else str(value)


def add_config_flags(p: argparse.ArgumentParser, skip: frozenset = frozenset()) -> None:
    """One flag per config field that has one (``featinv.config.setting``), its help and default
    taken from the field; ``--set SECTION.KEY=VALUE`` reaches every field, flag or not."""
    from .config import SECTIONS

    loss = add_section_flags(p, SECTIONS, skip)["loss"]
    advanced = p.add_argument_group("advanced")
    advanced.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE", dest="set_items",
                          help="any config.yaml key, e.g. --set data.image_size=160 train.channels_last=false "
                          "(applied before the flags above)")
    from .config import LOSS_TERMS as TERMS

    terms = " ".join(f"{k}={v:g}" for k, v in vars(SECTIONS["loss"]()).items() if k in TERMS and v > 0)
    loss.add_argument("--loss", nargs="+", metavar="TERM=WEIGHT",
                      help=f"loss terms and weights, e.g. mse=1 ssim=0.5 perceptual=0.1; terms: {', '.join(TERMS)}; "
                      f"unnamed terms get weight 0 (default {terms})")
    loss.add_argument("--perceptual-backbone", metavar="NAME[:WEIGHTS]",
                      help="backbone of the perceptual loss (default: the run's own, frozen)")
    advanced.add_argument("--config", help="YAML config file (a run's config.yaml works)")


GROUP_TITLES = {"data": "data", "backbone": "backbone", "decoder": "decoder", "loss": "loss", "train": "training",
                "invert": "inversion"}


def add_section_flags(p: argparse.ArgumentParser, sections: dict, skip: frozenset = frozenset(),
                      prefix: str = "") -> dict:
    """The flags of the fields of ``sections`` ({name: dataclass}), one help group per section
    (returned by name); values land in ``args`` as ``"name.field"`` (None when not given).
    ``prefix``: spelled ``--PREFIXflag`` (``--invert-steps``)."""
    import dataclasses
    import typing

    from .config import default_of, field_flag

    groups = {}
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        group = groups[section] = p.add_argument_group(GROUP_TITLES.get(section, section))
        for f in dataclasses.fields(cls):
            key, flag = f"{section}.{f.name}", field_flag(f)
            if flag is None or key in skip:
                continue
            flag = "--" + prefix + flag[2:]
            default, tp = default_of(f), hints[f.name]
            metavar = f.metadata.get("metavar") or flag.lstrip("-").upper().replace("-", "_")
            # argparse %-formats help texts: a literal % in a setting's help must be doubled
            kw: dict = {"dest": key, "default": None, "help": f.metadata["help"].replace("%", "%%")}
            if tp is bool:  # a flag that turns the default around: --strict, --no-augment
                kw.update(action="store_const", const=not default)
                kw["help"] = f"turn {'off' if default else 'on'}: {kw['help']} ({'on' if default else 'off'} by default)"
            else:
                if typing.get_origin(tp) is typing.Union:
                    tp = next(a for a in typing.get_args(tp) if a is not type(None))
                if typing.get_origin(tp) is list:
                    kw.update(nargs="+", metavar=metavar)
                else:
                    choices = f.metadata.get("choices")
                    kw.update(type=tp, choices=choices, metavar=None if choices else metavar)
                if "(default" not in kw["help"]:
                    kw["help"] += f" (default {_default_text(default)})"
            group.add_argument(flag, **kw)
    return groups


def _add_run_flags(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """Data, model and training flags shared by `train` and `sweep`."""
    if sweep:
        p.add_argument("--weights", nargs="+", default=["imagenet"],
                       help="one run per weights source: imagenet, random, or state-dict paths (default imagenet)")
        add_config_flags(p, skip=frozenset({"backbone.weights", "backbone.layers"}))
    else:
        add_config_flags(p)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a decoder from backbone features to images",
        description="Train a decoder that maps frozen backbone features back to the [0,1] RGB image. "
        "Flags override --config; unset flags keep the config file's (or the default) values.",
    )
    output = p.add_argument_group("output")
    output.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    _add_run_flags(p)
    output.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    output.add_argument("--break-lock", action="store_true",
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
    from .config import SWEEP_METHODS as METHODS, InvertConfig

    p.add_argument("--methods", nargs="+", default=["decoder"], metavar="METHOD",
                   help=f"how to invert, each a row of the study: {', '.join(METHODS)} (default decoder; "
                   "optimize and refine as `featinv invert`, on the decoders' held-out images; refine "
                   "trains the decoder it starts from)")
    _add_run_flags(p, sweep=True)
    add_section_flags(p, {"invert": InvertConfig}, prefix="invert-")


def _invert_parser(sub: argparse._SubParsersAction) -> None:
    from .config import INVERSIONS as METHODS, InvertConfig

    p = sub.add_parser(
        "invert", help="invert by optimisation: search the image whose features match (from noise, or refine a decoder's)",
        description="Gradient descent on the pixels until the backbone's features match the original's "
        "(Mahendran & Vedaldi 2015), with total-variation and alpha-norm priors, Adam, [0,1] box. "
        "optimize starts from the mean colour (or noise); refine starts from a trained run's reconstruction "
        "and keeps the iterate with the lowest feature error. Writes metrics.json (with feature_error), "
        "per_image.csv and results/; an interrupted run resumes after its finished images.",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="DIR|CACHE|FILE",
                   help="an image folder, a prepared cache, or image files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", choices=METHODS, default="optimize", help="optimize (default) or refine")
    p.add_argument("--run", help="refine: the trained run whose reconstruction is the start (its backbone and layers)")
    p.add_argument("--backbone", help="backbone (default resnet50, or the run's)")
    p.add_argument("--weights", help="imagenet (default), random or a state-dict path (default: the run's)")
    p.add_argument("--layers", nargs="+", help="taps whose features are matched (default: the backbone's stages, or the run's)")
    p.add_argument("--judge", default="auto", metavar="NAME", help="the independent classifier of the agreement "
                   "scores (default auto: efficientnet_lite2, or efficientnet_lite1 for Lite2 itself; none: no judge)")
    p.add_argument("--batch-size", type=int, default=8, help="images searched together (default 8)")
    p.add_argument("--max-images", type=int, help="invert at most N images (the first ones)")
    p.add_argument("--num-save", type=int, default=8, help="pairs to save (default 8)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    add_section_flags(p, {"invert": InvertConfig})


def _probe_parsers(sub: argparse._SubParsersAction) -> None:
    from .config import PROBES

    p = sub.add_parser(
        "probe", help="what the features encode, per depth: invariance, feature views, interpolation, ablation, metrics",
        description="Probe trained decoders (--runs) or the decoders that ship with featinv (--shipped) on your "
        "photos: how much each transform moves the features and what the decoder makes of it (invariance), "
        "each tap's channels as pictures (views), two photos blended in feature space (interpolate), channels "
        "zeroed (ablate), and where PSNR and SSIM disagree (metrics). Writes a CSV and figures per probe and "
        "probe.json; `featinv report OUT` shows them.",
    )
    p.add_argument("--runs", nargs="+", default=[], metavar="RUN",
                   help="run directories, or shipped decoders by name (stage1 … stage4)")
    p.add_argument("--shipped", action="store_true",
                   help="probe the decoders that ship with featinv (EfficientNet-Lite0, ImageNet weights, one per stage)")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR|FILE", help="image files and/or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--probes", nargs="+", default=list(PROBES), metavar="PROBE",
                   help=f"which probes (default all): {', '.join(PROBES)}")
    p.add_argument("--max-images", type=int, default=8, help="probe the first N images (default 8)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")

    p = sub.add_parser("features", help="look at a backbone's feature maps: principal components, channels, statistics",
                       description="For each tap: the first image's features as a picture (three principal "
                       "components as RGB, the most energetic channels) and, over all images, the share of "
                       "zeros and the effective rank. Writes views.png and views.csv.")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backbone", default="resnet50", help="backbone (default resnet50; see `featinv backbones`)")
    p.add_argument("--weights", default="imagenet", help="imagenet (default), random or a state-dict path")
    p.add_argument("--layers", nargs="+", help="taps (default: the backbone's four stages)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")


def cmd_probe(args: argparse.Namespace) -> None:
    from .probe import probe

    info = probe(args.runs, args.shipped, args.data, args.out, args.probes, args.max_images, args.device)
    print(f"probed {len(info['depths'])} depth(s) on {len(info['images'])} image(s): {', '.join(info['probes'])} "
          f"→ {args.out} (featinv report {args.out} --out report.html shows them)")


def cmd_features(args: argparse.Namespace) -> None:
    from .probe import features

    rows = features(args.images, args.out, args.backbone, args.weights, args.layers, args.device)
    print(f"{len(rows)} tap(s) → {Path(args.out) / 'views.png'}, {Path(args.out) / 'views.csv'}")


def _invert_config(args: argparse.Namespace) -> "InvertConfig":
    import dataclasses

    from .config import InvertConfig

    return InvertConfig(**{f.name: v for f in dataclasses.fields(InvertConfig)
                           if (v := getattr(args, f"invert.{f.name}", None)) is not None})


def cmd_invert(args: argparse.Namespace) -> None:
    from .invert import invert

    cfg = _invert_config(args)
    m = invert(args.data, args.out, backbone=args.backbone, weights=args.weights, layers=args.layers,
               method=args.method, run=args.run, cfg=cfg, batch_size=args.batch_size, max_images=args.max_images,
               num_save=args.num_save, device=args.device, judge=args.judge)
    print(f"{m['n_images']} images: PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  feature error "
          f"{m['feature_error_mean']:.4f}  {m['seconds_per_image']:.1f} s/image  → {args.out}")


def _set_loss_weights(cfg, items: Sequence[str]) -> None:
    """``--loss mse=1 ssim=0.5``: the named terms get these weights, the others 0."""
    from .config import LOSS_TERMS as TERMS

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


def apply_set(cfg, items: Sequence[str]):
    """``--set SECTION.KEY=VALUE ...`` (VALUE read as YAML) on a copy of ``cfg``; checked like config.yaml."""
    import yaml

    from .config import RunConfig

    d = cfg.to_dict()
    for item in items:
        key, sep, value = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or not isinstance(d.get(section), dict) or name not in d[section]:
            sections = ", ".join(k for k, v in d.items() if isinstance(v, dict))
            raise FeatinvError(f"--set takes SECTION.KEY=VALUE with a key of config.yaml (sections: {sections}); got {item!r}.")
        try:
            d[section][name] = yaml.safe_load(value)
        except yaml.YAMLError:
            d[section][name] = value
    return RunConfig.from_dict(d)


def _base_config(args: argparse.Namespace):
    """The resumed run's config, the --config file's, or the defaults."""
    from .config import RunConfig, load_config
    from .rundir import RunDir

    run = RunDir(args.out)
    if getattr(args, "resume", False):
        if not run.has_config():
            raise FeatinvError(f"--resume: {args.out} holds no run to resume; drop --resume to start one.")
        return run.read_config()
    return load_config(args.config) if args.config else RunConfig()


def _build_config(args: argparse.Namespace):
    """The config of a train or sweep command: base, then --set, then the flags that were given."""
    import dataclasses

    from .config import SECTIONS

    cfg = apply_set(_base_config(args), args.set_items)
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = getattr(args, f"{section}.{f.name}", None)
            if value is not None:
                setattr(getattr(cfg, section), f.name, value)
    if args.loss:
        _set_loss_weights(cfg, args.loss)
    if args.perceptual_backbone:
        name, _, weights = args.perceptual_backbone.partition(":")
        if weights not in ("", "imagenet", "random"):
            weights = str(Path(weights).expanduser().resolve())
        cfg.loss.perceptual_backbone, cfg.loss.perceptual_weights = name, weights or "imagenet"
    _absolute_paths(cfg)
    # Without a flag the ResNet names stay the default; other backbones default to their own taps.
    if getattr(args, "backbone.name", None) and not getattr(args, "backbone.layers", None) \
            and not getattr(args, "resume", False) and not args.config:
        from .backbones import get_spec

        cfg.backbone.layers = get_spec(cfg.backbone.name).default_layers
    return cfg


def _absolute_paths(cfg) -> None:
    """Paths are stored absolute so the run directory alone can find its data again."""
    import dataclasses

    from .config import SECTIONS

    def absolute(v: str) -> str:
        return str(Path(v).expanduser().resolve())

    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = getattr(getattr(cfg, section), f.name)
            if f.metadata.get("path") and value:
                setattr(getattr(cfg, section), f.name, [absolute(v) for v in value] if isinstance(value, list) else absolute(value))
    if cfg.backbone.weights not in ("imagenet", "random"):
        cfg.backbone.weights = absolute(cfg.backbone.weights)


def cmd_train(args: argparse.Namespace) -> None:
    from .training import train

    train(_build_config(args), args.out, resume=args.resume, command=args.command_line, break_lock=args.break_lock)


def cmd_sweep(args: argparse.Namespace) -> None:
    from .sweep import DEFAULT_LAYER_SETS, parse_models, run_sweep

    base = _build_config(args)
    models = parse_models(args.models, base.backbone.name, args.weights)
    models = [(b, w if w in ("imagenet", "random") else str(Path(w).expanduser().resolve())) for b, w in models]
    rows = run_sweep(base, args.out, args.layer_sets or DEFAULT_LAYER_SETS, models, semantic=not args.no_semantic,
                     command=args.command_line, methods=args.methods, invert_cfg=_invert_config(args))
    from .dist import world_from_env
    from .report import markdown_table

    if world_from_env().main:
        print(markdown_table(rows))
        print(f"tables, figures and report.html in {args.out}")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import build_report, is_probe_dir

    rows = build_report([Path(p) for p in args.paths], Path(args.out), title=args.title,
                        figures_dir=Path(args.figures) if args.figures else None,
                        info={"report command": args.command_line})
    probes = sum(map(is_probe_dir, args.paths))
    parts = [f"{len(rows)} configuration{'s' if len(rows) != 1 else ''}"] if rows or not probes else []
    parts += [f"{probes} probe folder{'s' if probes != 1 else ''}"] if probes else []
    print(f"wrote {args.out} ({', '.join(parts)})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .dist import world_from_env
    from .evaluate import evaluate_run, load_run

    if not world_from_env().main:  # under torchrun rank 0 scores the whole set (evaluate_run is not sharded)
        return

    from .pretrained import run_or_shipped

    path = run_or_shipped(args.run)
    shipped = not Path(args.run).expanduser().exists()
    if shipped and args.data is None:
        raise FeatinvError(f"the shipped decoder {args.run} brings no validation photos; give --data FOLDER.")
    out = Path(args.out) if args.out else Path(f"evaluation-{args.run}") if shipped else path / "evaluation"
    run = load_run(path, device=args.device)
    m = evaluate_run(run, data=args.data, out=out, num_save=args.num_save, batch_size=args.batch_size, judge=args.judge)
    print(f"{m['n_images']} images: MSE {m['mse']:.5f}  PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  → {out}")
    if m.get("judge_top1_agreement") is not None:
        fd = f", fd_judge {m['fd_judge']:.1f}" if m["fd_judge"] is not None else " (fd_judge: 50 images or more)"
        print(f"top-1 agreement: {m['judge']} (judge) {100 * m['judge_top1_agreement']:.0f}%, "
              f"{run.config.backbone.name} (the backbone itself) {100 * m['top1_agreement']:.0f}%{fd}")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from .evaluate import reconstruct_files
    from .pretrained import run_or_shipped

    files = reconstruct_files(run_or_shipped(args.run), args.images, args.out)
    pairs = sum(f.name.startswith("reconstruction_") for f in files)
    print(f"reconstructed {pairs} image(s) into {args.out} (per_image.csv: the scores, comparison.png: side by side)")


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


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and a pointer to --help, not the whole usage above them (that of
    `featinv train` is some 30 lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nRun `{self.prog} --help` to see every flag.\n")


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = _Parser(
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
    _invert_parser(sub)
    _probe_parsers(sub)

    p = sub.add_parser("evaluate", help="score a trained run on a folder of images",
                       description="Reconstruct and score images with a run's decoder; writes metrics.json, "
                       "per_image.csv and original/reconstruction pairs.")
    p.add_argument("run", help="run directory written by `featinv train`, or a shipped decoder (stage1 .. stage4)")
    p.add_argument("--data", help="image folder to score (default: the run's own validation split)")
    p.add_argument("--out", help="output folder (default RUN/evaluation; evaluation-NAME for a shipped decoder)")
    p.add_argument("--judge", metavar="NAME", help="the independent classifier of the semantic scores (default: the "
                   "run's, auto: efficientnet_lite2; none: no judge)")
    p.add_argument("--num-save", type=int, default=8, help="pairs to save (default 8)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the run's)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")

    p = sub.add_parser("reconstruct", help="reconstruct your own images with a trained run or a shipped decoder",
                       description="Center-crop each image as in training and write original_* and "
                       "reconstruction_* PNGs, per_image.csv (MSE, PSNR, SSIM) and comparison.png.")
    p.add_argument("run", help="run directory written by `featinv train`, or a shipped decoder: stage1 … stage4 "
                   "(EfficientNet-Lite0, ImageNet weights; the offline extra)")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
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

    p = sub.add_parser("report", help="build the HTML report from run, sweep or probe directories",
                       description="A self-contained HTML page (figures embedded) with the table, metrics "
                       "against depth, reconstructions and error maps of the given runs or sweeps, and the probes of "
                       "`featinv probe` folders.")
    p.add_argument("paths", nargs="+", help="run, sweep and/or probe directories (`featinv probe --out`)")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--title", default="featinv report", help="page title")
    p.add_argument("--figures", metavar="DIR", help="also write the figures as PNG files into DIR")

    p = sub.add_parser("backbones", help="list backbones, their taps and whether weights are present",
                       description="List every backbone with its stage taps (shapes at --image-size) and "
                       "whether its ImageNet weights are on this machine. --layers also takes raw graph "
                       "node names, e.g. layer3.5.relu_2.")
    p.add_argument("--image-size", type=int, default=224, help="input size for the shapes (default 224)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("demo", help="what each depth keeps, and the pipeline end to end, on bundled photos (offline, on a CPU)",
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
    "invert": cmd_invert,
    "probe": cmd_probe,
    "features": cmd_features,
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
    from .dist import world_from_env

    world = world_from_env()
    logging.basicConfig(  # under torchrun the other ranks say only what goes wrong
        level=logging.WARNING if args.quiet or not world.main else logging.INFO,
        format="%(message)s" if not world.distributed else f"[rank {world.rank}] %(message)s", stream=sys.stderr,
    )
    from .training import TrainingInterrupted

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
    finally:
        from .dist import shutdown

        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
