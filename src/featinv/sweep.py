"""The depth study: one decoder per (backbone, weights, layer set), same budget, same held-out images.

A sweep directory holds ``sweep.json`` (the plan), ``runs/<name>/`` (ordinary run directories),
``summary.{csv,md,json}``, ``figures/`` and ``report.html``. Running the same sweep again skips
finished runs and resumes interrupted ones.

With ``methods`` the inversion method is a dimension of the study too: ``runs/<name>-optimize/``
and ``runs/<name>-refine/`` (from ``runs/<name>``'s decoder) hold what `featinv invert` writes,
on the decoders' own held-out images, with their reference lines; the decoder runs then also get
``feature_error.json`` so that every method is compared on pixel and feature fidelity.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from . import dist, report
from .backbones import get_spec, resolve_layers
from .config import INVERSIONS, SWEEP_METHODS, BackboneConfig, RunConfig, check_judge, resolve_recipe, validate_config
from .data import SkipLog, check_data_paths, split_for_config
from .evaluate import Run, evaluate_loader, load_run, write_semantics
from .invert import InvertConfig, invert_images, plain_extractor
from .rundir import RunDir
from .training import train
from .utils import FeatinvError, atomic_write_text, resolve_device

log = logging.getLogger("featinv")

DEFAULT_LAYER_SETS = ("stage1", "stage2", "stage3", "stage4", "all")
METHODS = SWEEP_METHODS


@dataclass(frozen=True)
class Entry:
    backbone: str
    weights: str
    layer_set: str
    layers: tuple[str, ...]

    @property
    def name(self) -> str:
        w = self.weights if self.weights in ("imagenet", "random") else Path(self.weights).stem
        return f"{self.backbone}-{w}-{self.layer_set}".replace("/", "_")


def parse_models(models: Optional[Sequence[str]], backbone: str, weights: Sequence[str]) -> list[tuple[str, str]]:
    """``--models NAME:WEIGHTS ...`` if given, else ``--backbone`` with each of ``--weights``."""
    if not models:
        return [(backbone, w) for w in weights]
    out = []
    for m in models:
        name, sep, w = m.partition(":")
        if not sep or not name or not w:
            raise FeatinvError(f"--models takes BACKBONE:WEIGHTS items (e.g. efficientnet_lite0:imagenet), got '{m}'.")
        out.append((name, w))
    return out


def expand_layer_set(backbone: str, layer_set: str) -> tuple[str, ...]:
    """``all`` → the backbone's four stages; ``a+b`` → both; a single name → itself.
    ResNets accept ``layerN`` and ``stageN`` alike."""
    spec = get_spec(backbone)
    if layer_set == "all":
        return tuple(spec.default_layers)
    inverse = {stage: alias for alias, stage in spec.aliases.items()}
    # Report ResNet stages by their familiar names whichever spelling the user chose.
    return tuple(inverse.get(part, part) for part in layer_set.split("+"))


def plan(base: RunConfig, layer_sets: Sequence[str], models: Sequence[tuple[str, str]]) -> list[Entry]:
    entries = [
        Entry(b, w, ls, expand_layer_set(b, ls)) for b, w in models for ls in layer_sets
    ]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise FeatinvError("the sweep names a configuration twice; check --layer-sets and --models.")
    return entries


def check_layers(entries: Sequence[Entry], judge: str = "auto") -> None:
    """Fail on a bad backbone, layer name or judge before hours of training, not when its turn comes.
    The graphs come from meta-device builds: no weights, no compute."""
    import torch

    for backbone in dict.fromkeys(e.backbone for e in entries):
        check_judge(judge, backbone)
        spec = get_spec(backbone)
        with torch.device("meta"):
            model = spec.build()
        for e in entries:
            if e.backbone == backbone:
                resolve_layers(spec, e.layers, model)


def check_same_settings(
    run_dir: Path, cfg: RunConfig, ignored: frozenset = frozenset({("train", "device"), ("data", "num_workers")})
) -> None:
    """A finished run is reused only if it was trained as ``cfg`` would train it (``ignored``
    keys aside: by default those that change where it ran, not what it learned). config.yaml holds
    the batch size and learning rate the device chose, so ``cfg``'s are resolved the same way first."""
    from .config import diff_configs

    cfg = resolve_recipe(cfg, resolve_device(cfg.train.device), dist.world_from_env().size)
    changed = [k for k in diff_configs(RunDir(run_dir).read_config().to_dict(), cfg.to_dict()) if k not in ignored]
    if changed:
        raise FeatinvError(
            f"{run_dir} was trained with other settings ({', '.join('.'.join(k) for k in changed)}); "
            "use another --out to train with different settings."
        )


def check_methods(methods: Sequence[str]) -> None:
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise FeatinvError(f"--methods takes {', '.join(METHODS)}; got {' '.join(bad) or 'none'}.")


def method_dirs(out: Path, e: Entry, methods: Sequence[str]) -> list[Path]:
    """The folders of one configuration, in the order of ``methods``; ``refine`` needs the decoder,
    which is then trained (and reported) even when ``decoder`` is not named."""
    wanted = list(dict.fromkeys((["decoder"] if "refine" in methods else []) + list(methods)))
    wanted.sort(key=list(METHODS).index)
    return [out / "runs" / (e.name if m == "decoder" else f"{e.name}-{m}") for m in wanted]


def decoder_feature_error(run: Run, base: RunConfig, records: Sequence[Any]) -> None:
    """The decoder's feature error and seconds per image on the sweep's held-out images
    (``feature_error.json``), beside the inversions' (skipped when already there)."""
    rd = RunDir(run.path)
    if rd.read_feature_error() is not None:
        return
    t = time.perf_counter()
    ev = evaluate_loader(run.extractor, run.decoder, run.loader(records, base.train.batch_size, 0), records,
                         run.device, feature_errors=True, precision=run.precision)
    rd.write_feature_error({"feature_error": ev.metrics["feature_error"], "n_images": len(ev.per_image),
                            "seconds_per_image": (time.perf_counter() - t) / max(1, len(ev.per_image))})


def run_inversion(method: str, e: Entry, base: RunConfig, out_dir: Path, run: Optional[Run],
                  records: Sequence[Any], cfg: InvertConfig) -> None:
    """`featinv invert` for one configuration, through ``run``'s backbone (and, for refine, from
    its decoder) when the sweep trained one; resumes after the images already done."""
    d, t = base.data, base.train
    if run is not None:
        extractor, decoder, title, device = run.extractor, run.decoder, run.describe(), run.device
        reference = RunDir(run.path).read_summary().get("reference")
    else:  # optimize without a trained decoder: no reference lines to borrow
        device = resolve_device(t.device)
        extractor, title = plain_extractor(e.backbone, e.weights, e.layers, t.seed, device)
        decoder, reference = None, None
    invert_images(extractor, records, out_dir, method, cfg, decoder if method == "refine" else None, d.image_size,
                  d.resize, t.batch_size, t.num_save, device, title, extra={"reference": reference},
                  judge=base.backbone.judge)


def run_inversions(out: Path, entries: Sequence[Entry], base: RunConfig, methods: Sequence[str],
                   cfg: InvertConfig) -> None:
    """Each configuration's optimize/refine folder, on the decoders' held-out images, and the
    decoders' own feature error beside them (each decoder run loaded once)."""
    inversions = [m for m in methods if m in INVERSIONS]
    if not inversions:
        return
    _, val = split_for_config(base.data, SkipLog())
    for e in entries:
        decoder_dir = out / "runs" / e.name
        run = load_run(decoder_dir, device=base.train.device) if RunDir(decoder_dir).completed() else None
        if run is not None:
            decoder_feature_error(run, base, val)
        for m in inversions:
            log.info("── %s: %s", e.name, m)
            run_inversion(m, e, base, out / "runs" / f"{e.name}-{m}", run, val, cfg)


def entry_config(base: RunConfig, e: Entry) -> RunConfig:
    cfg = copy.deepcopy(base)
    cfg.backbone = BackboneConfig(name=e.backbone, weights=e.weights, layers=list(e.layers), judge=base.backbone.judge)
    return cfg


def run_sweep(
    base: RunConfig,
    out: Union[str, Path],
    layer_sets: Sequence[str] = DEFAULT_LAYER_SETS,
    models: Sequence[tuple[str, str]] = (("resnet50", "imagenet"),),
    semantic: bool = True,
    command: Optional[str] = None,
    methods: Sequence[str] = ("decoder",),
    invert_cfg: InvertConfig = InvertConfig(),
) -> list[dict[str, Any]]:
    """Train and score every configuration, then write the tables, figures and report.
    ``command``: the shell-quoted command line, recorded in sweep.json, every run and the report.
    ``methods``: decoder, optimize and/or refine (``invert_cfg``: the searches' settings)."""
    out = Path(out)
    validate_config(base)
    check_data_paths(base.data)  # before anything is written
    # the batch size and learning rate the runs will train with, so finished runs compare alike
    base = resolve_recipe(base, resolve_device(base.train.device), dist.world_from_env().size)
    check_methods(methods)
    entries = plan(base, layer_sets, models)
    check_layers(entries, base.backbone.judge)
    t0 = time.perf_counter()
    # Under torchrun every rank runs the same plan, each configuration data-parallel over all of
    # them (docs/guide/distributed.md); rank 0 alone writes the sweep's files.
    main = dist.world_from_env().main
    for e in entries:  # refuse before anything is written, sweep.json included
        if RunDir(out / "runs" / e.name).completed():
            check_same_settings(out / "runs" / e.name, entry_config(base, e))
    out.mkdir(parents=True, exist_ok=True)
    sweep_meta = {
        "layer_sets": list(layer_sets),
        "models": [f"{b}:{w}" for b, w in models],
        "methods": list(methods),
        "runs": [d.name for e in entries for d in method_dirs(out, e, methods)],
        "base_config": base.to_dict(),
        "command": command,
    }
    if main:
        atomic_write_text(out / "sweep.json", json.dumps(sweep_meta, indent=2) + "\n")
    wants_decoder = "decoder" in methods or "refine" in methods
    for i, e in enumerate(entries, 1):
        run_dir = out / "runs" / e.name
        log.info("── sweep %d/%d: %s", i, len(entries), e.name)
        if not wants_decoder:
            pass
        elif RunDir(run_dir).completed():
            log.info("already finished; skipping")
        else:
            resume = RunDir(run_dir).has_checkpoint()
            if not resume and run_dir.exists() and main:
                shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to keep
            dist.barrier()
            train(entry_config(base, e), run_dir, resume=resume, command=command, semantic=semantic)
        if wants_decoder and main and semantic and e.weights != "random" and RunDir(run_dir).read_semantics() is None:
            write_semantics(load_run(run_dir, device=base.train.device))  # a run finished by an older version
    if main:  # the searches run on rank 0 (per image, nothing to share between ranks)
        run_inversions(out, entries, base, methods, invert_cfg)
    dist.barrier()
    run_dirs = [d for e in entries for d in method_dirs(out, e, methods)]
    if not main:
        return [report.run_row(d) for d in run_dirs]
    rows = report.build_report(
        run_dirs, out / "report.html", figures_dir=out / "figures",
        title=f"featinv depth study: {out.name}",
        info={"command": command or "run_sweep() from Python", "sweep time (this invocation)": f"{time.perf_counter() - t0:.0f} s"},
    )
    report.write_tables(rows, out)
    return rows
