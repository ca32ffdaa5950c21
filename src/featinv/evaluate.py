"""Scoring: reconstruct a dataset, measure it per image, save pairs; reload run directories."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ._version import __version__
from . import metrics as M
from . import figures
from .backbones import FeatureExtractor, load_strict
from .config import RunConfig
from .data import (
    ImageDataset,
    ImageRecord,
    SkipLog,
    find_images,
    list_folder,
    load_image,
    make_loader,
    check_cache_size,
    preprocess,
    split_for_config,
    to_float,
    usable_records,
)
from .decoders import decoder_from_spec
from .rundir import RunDir
from .semantics import SemanticScorer, agreement  # noqa: F401 - agreement: featinv.evaluate's name before semantics
from .utils import FeatinvError, atomic_write_text, autocast, progress_enabled, resolve_device, resolve_precision

log = logging.getLogger("featinv")


@torch.no_grad()
def reconstruct(extractor: FeatureExtractor, decoder: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """[0,1] images → [0,1] float32 reconstructions through the frozen backbone and the decoder."""
    with autocast(precision, x.device):
        y = decoder(extractor(x))
    return y.float().clamp_(0.0, 1.0)


@dataclass
class Evaluation:
    metrics: dict[str, float]  # means over images
    n_images: int
    per_image: list[dict[str, Any]]
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    originals: Optional[torch.Tensor] = None  # the first `keep` images, uint8 on the CPU
    reconstructions: Optional[torch.Tensor] = None


def evaluate_loader(
    extractor: FeatureExtractor,
    decoder: nn.Module,
    loader: torch.utils.data.DataLoader,
    records: Sequence[ImageRecord],
    device: torch.device,
    skips: Optional[SkipLog] = None,
    keep: int = 0,
    mean_image: Optional[torch.Tensor] = None,
    reference_stride: Optional[int] = None,
    desc: str = "evaluate",
    precision: str = "fp32",
    channels_last: bool = False,
    feature_errors: bool = False,
) -> Evaluation:
    """Score every image of ``loader``; optionally the reference lines beside the decoder.

    ``mean_image`` (3×H×W in [0,1]) predicts every image as that one image; ``reference_stride``
    scores the bicubic down/up-sampled image (the colour a map of that stride could hold).
    ``feature_errors``: also ‖φ(x̂) − φ(x)‖² / ‖φ(x)‖² per image, averaged over the taps (one more
    backbone pass), the quantity optimisation-based inversion minimises.
    """
    from .utils import progress_bar as tqdm

    decoder.eval()
    acc, ref_mean, ref_bicubic = M.MeanAccumulator(), M.MeanAccumulator(), M.MeanAccumulator()
    rows: list[dict[str, Any]] = []
    kept_x: list[torch.Tensor] = []
    kept_y: list[torch.Tensor] = []
    n_kept = 0
    loader.sampler.set_epoch(0)
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress_enabled()):
        for index, reason in batch["skipped"]:
            if skips is not None:
                skips.add(records[index].relpath, reason)
        if "image" not in batch:
            continue
        x = to_float(batch["image"], device, channels_last)
        y = reconstruct(extractor, decoder, x, precision)
        s = M.score(y, x)
        if feature_errors:
            with torch.no_grad(), autocast(precision, x.device):
                fy, fx = extractor(y), extractor(x)
            s["feature_error"] = M.mean_over_taps(M.feature_distance(fy, fx))
            s["feature_cosine"] = M.mean_over_taps(M.feature_cosine(fy, fx))
        acc.add(s)
        for j, index in enumerate(batch["index"].tolist()):
            rows.append({"file": records[index].relpath, **{k: float(v[j]) for k, v in s.items()}})
        if mean_image is not None:
            ref_mean.add(M.score(mean_image.to(device).expand_as(x).contiguous(), x))
        if reference_stride:
            ref_bicubic.add(M.score(M.bicubic_thumbnail(x, reference_stride), x))
        if n_kept < keep:
            take = min(keep - n_kept, len(x))
            kept_x.append(batch["image"][:take].cpu())
            kept_y.append((y[:take] * 255).round().to(torch.uint8).cpu())
            n_kept += take
    if acc.n == 0:
        raise FeatinvError("no image could be decoded for evaluation; see the skipped files above.")
    reference = {}
    if ref_mean.n:
        reference["mean_image"] = ref_mean.result()
    if ref_bicubic.n:
        reference[f"bicubic_x{reference_stride}"] = ref_bicubic.result()
    return Evaluation(
        metrics=acc.result(),
        n_images=acc.n,
        per_image=rows,
        reference=reference,
        originals=torch.cat(kept_x) if kept_x else None,
        reconstructions=torch.cat(kept_y) if kept_y else None,
    )


def combine_evaluations(parts: Sequence[Evaluation]) -> Evaluation:
    """One evaluation from the evaluations of disjoint shards, in order: per-image rows joined,
    means over all images (per image, then averaged), the first shard's saved pairs."""
    rows = [r for p in parts for r in p.per_image]
    n = sum(p.n_images for p in parts)
    if n == 0:
        raise FeatinvError("no image could be decoded for evaluation; see the skipped files above.")
    metrics = {k: sum(r[k] for r in rows) / n for k in parts[0].metrics}
    reference = {}
    for k in parts[0].reference:
        reference[k] = {m: sum(p.reference[k][m] * p.n_images for p in parts if k in p.reference) / n
                        for m in parts[0].reference[k]}
    return Evaluation(metrics, n, rows, reference, parts[0].originals, parts[0].reconstructions)


def save_pairs(ev: Evaluation, out: Path, title: str) -> None:
    """``results/original_<i>.png``, ``results/reconstruction_<i>.png`` and ``results/comparison.png``."""
    if ev.originals is None:
        return
    results = out / "results"
    for i, (a, b) in enumerate(zip(ev.originals, ev.reconstructions)):
        figures.save_png(a, results / f"original_{i}.png")
        figures.save_png(b, results / f"reconstruction_{i}.png")
    n = len(ev.originals)
    figures.comparison_figure(
        ev.originals,
        ev.reconstructions,
        [f"PSNR {r['psnr']:.2f} dB\nSSIM {r['ssim']:.3f}" for r in ev.per_image[:n]],
        title,
        results / "comparison.png",
    )


def save_extremes(
    extractor: FeatureExtractor,
    decoder: nn.Module,
    records: Sequence[ImageRecord],
    per_image: Sequence[dict[str, Any]],
    out: Path,
    device: torch.device,
    image_size: int = 224,
    resize: int = 256,
    precision: str = "fp32",
    k: int = 2,
    title: str = "",
) -> None:
    """``results/best_worst.png``: the ``k`` best and ``k`` worst images by PSNR (best first),
    reconstructed again: where a decoder succeeds and where it fails, not only the first few. With
    fewer than ``2k`` images each side gets half of them (each image once); with one, no figure."""
    ranked = sorted(per_image, key=lambda r: -r["psnr"])
    k = min(k, len(ranked) // 2)
    if k == 0:
        return
    files = [r["file"] for r in ranked[:k]] + [r["file"] for r in ranked[-k:]]
    by_name = {r.relpath: r for r in records}
    recs = [by_name[f] for f in files if f in by_name]
    if not recs:
        return
    batch = next(iter(make_loader(ImageDataset(recs, image_size, resize, train=False), len(recs), shuffle=False,
                                  num_workers=0)))
    if "image" not in batch:
        return
    decoder.eval()
    y = reconstruct(extractor, decoder, to_float(batch["image"], device), precision)
    score_of = {r["file"]: r for r in per_image}
    best = {r["file"] for r in ranked[:k]}
    labels = [f"{'best' if r.relpath in best else 'worst'}: {score_of[r.relpath]['psnr']:.2f} dB\n"
              f"SSIM {score_of[r.relpath]['ssim']:.3f}" for r in recs]
    figures.comparison_figure(batch["image"], (y.float() * 255).round().to(torch.uint8).cpu(), labels,
                             f"{title} — best and worst by PSNR", out / "results" / "best_worst.png")


def write_per_image(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    keys = [k for k in ("mse", "psnr", "ssim", "feature_error", "feature_cosine") if not rows or k in rows[0]]
    w = csv.DictWriter(buf, fieldnames=["file", *keys], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({"file": r["file"], **{k: f"{r[k]:.6g}" for k in keys}})
    atomic_write_text(path, buf.getvalue())


@dataclass
class Run:
    """A trained decoder rebuilt from its run directory, ready to reconstruct images."""

    path: Path
    config: RunConfig
    extractor: FeatureExtractor
    decoder: nn.Module
    device: torch.device
    summary: dict[str, Any]
    precision: str = "fp32"  # resolved from the config for this device

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W [0,1] images (any device) → reconstructions on the run's device."""
        return reconstruct(self.extractor, self.decoder, x.to(self.device), self.precision)

    def loader(self, records: Sequence[ImageRecord], batch_size: int, num_workers: int = -1) -> torch.utils.data.DataLoader:
        """Center crops of ``records`` as this run's training scored them, in order."""
        d = self.config.data
        return make_loader(ImageDataset(records, d.image_size, d.resize, train=False), batch_size, shuffle=False,
                           num_workers=num_workers, pin_memory=self.device.type == "cuda")

    def describe(self) -> str:
        return run_title(self.config, self.extractor.weights_info["weights"])


def run_title(cfg: RunConfig, weights: str) -> str:
    """The one-line title of a run's figures: backbone, weights, layers, decoder (its notes stay in
    summary.json and the report, not in every figure)."""
    b = cfg.backbone
    return f"{b.name} ({weights}), {layers_text(b.layers)}, {cfg.decoder.name} decoder"


def layers_text(layers: Sequence[str]) -> str:
    """``stage1–4`` for consecutive numbered taps of one kind, else the names joined by ``+``."""
    import re

    parts = [re.fullmatch(r"([a-z_]+)(\d+)", name) for name in layers]
    if len(layers) > 2 and all(parts) and len({m.group(1) for m in parts}) == 1:
        numbers = [int(m.group(2)) for m in parts]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return f"{parts[0].group(1)}{numbers[0]}–{numbers[-1]}"
    return "+".join(layers)


def load_run(path: Union[str, Path], device: str = "auto") -> Run:
    """Rebuild the backbone and the exported decoder of a run directory."""
    rd = RunDir(path)
    path = rd.path
    cfg = rd.read_config()
    meta, tensors = rd.read_decoder()
    dev = resolve_device(device)
    b = cfg.backbone
    if meta.get("backbone") != b.name or meta.get("layers") != b.layers:
        raise FeatinvError(
            f"decoder in {path} was trained on {meta.get('backbone')} layers {meta.get('layers')}, "
            f"but config.yaml says {b.name} layers {b.layers}."
        )
    extractor = FeatureExtractor(b.name, b.weights, b.layers, seed=cfg.train.seed)
    saved_sha = meta.get("weights", {}).get("sha256")
    if saved_sha and extractor.weights_info.get("sha256") not in (None, saved_sha):
        log.warning("backbone weights differ from the ones this run was trained with (sha256 mismatch).")
    shapes = {k: list(v) for k, v in extractor.feature_shapes(cfg.data.image_size).items()}
    if shapes != meta["decoder"]["shapes"]:
        raise FeatinvError(
            f"decoder in {path} expects feature shapes {meta['decoder']['shapes']}, "
            f"but {b.name} gives {shapes}."
        )
    try:
        decoder = decoder_from_spec(meta["decoder"])
    except (FeatinvError, KeyError, TypeError) as e:
        raise FeatinvError(
            f"cannot rebuild the decoder in {path / 'decoder.json'}, written by featinv "
            f"{meta.get('featinv_version', '(unknown version)')}; this is featinv {__version__} "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})."
        ) from None
    try:
        load_strict(decoder, tensors, str(path / "decoder.safetensors"))
    except FeatinvError as e:
        raise FeatinvError(f"{e} It was written by featinv {meta.get('featinv_version', '(unknown version)')}; "
                           f"this is featinv {__version__}.") from None
    summary = rd.read_summary()
    mf = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return Run(path, cfg, extractor.to(dev, memory_format=mf), decoder.to(dev, memory_format=mf).eval(), dev, summary,
               resolve_precision(cfg.train.precision, dev))


# metrics.json's semantic keys (featinv.semantics): the backbone's own agreement, then the judge's
SEMANTIC_KEYS = ("top1_agreement", "top5_agreement", "judge", "judge_top1_agreement", "judge_top5_agreement", "fd_judge")


def evaluate_run(
    run: Union[Run, str, Path],
    data: Optional[Union[str, Path]] = None,
    out: Optional[Union[str, Path]] = None,
    num_save: int = 8,
    batch_size: Optional[int] = None,
    num_workers: int = -1,
    semantic: bool = True,
    data_label: Optional[str] = None,
    judge: Optional[str] = None,
) -> dict[str, Any]:
    """Score a run on ``data`` (every image in it) or, by default, on the run's own val split.
    ``data_label``: how the figures name ``data`` (default: as given).
    With pretrained backbone weights (and ``semantic``) the semantic scores too: agreement under
    the backbone's classifier and under ``judge`` (default the run's ``backbone.judge``), and
    ``fd_judge`` with 50 images or more (:mod:`featinv.semantics`).

    Writes ``metrics.json``, ``per_image.csv`` and the saved pairs into ``out``
    (default ``RUN/evaluation``) and returns the metrics.
    """
    if not isinstance(run, Run):
        run = load_run(run)
    cfg = run.config
    skips = SkipLog()
    if data is None:
        _, records = split_for_config(cfg.data, skips)
        source = "the run's validation split"
    else:
        images = find_images(data)
        check_cache_size(images, cfg.data.image_size)
        records = usable_records(images, skips)
        source = str(Path(data).resolve())
        if not records:
            raise FeatinvError(f"no usable images in {data}.")
    out = Path(out) if out is not None else run.path / "evaluation"
    loader = run.loader(records, batch_size or cfg.train.batch_size, num_workers)
    ev = evaluate_loader(run.extractor, run.decoder, loader, records, run.device, skips, keep=num_save,
                         precision=run.precision, channels_last=cfg.train.channels_last, feature_errors=True)
    sem = run_semantics(run, records, batch_size or cfg.train.batch_size, num_workers, judge) if semantic else None
    result = {
        "run": str(run.path.resolve()),
        "data": source,
        "n_images": ev.n_images,
        **ev.metrics,
        "skipped": len(skips),
        "backbone": run.extractor.weights_info,
        "layers": cfg.backbone.layers,
        "decoder": cfg.decoder.name,
        "notes": cfg.notes,
        # None: random backbone weights (no classes to agree on) or not asked for
        **{k: (sem or {}).get(k) for k in SEMANTIC_KEYS},
        "semantic_reference": (sem or {}).get("reference"),
    }
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    write_per_image(ev.per_image, out / "per_image.csv")
    if skips:
        figures.write_skipped(skips.rows(), out / "skipped.csv")
    shown = data_label or ("val split" if data is None else str(data))  # as the user typed it
    save_pairs(ev, out, f"{run.describe()} — {shown}")
    log.debug(  # the caller reports the result (the CLI prints it once)
        "evaluated %d images: MSE %.5f  PSNR %.2f dB  SSIM %.4f (%d skipped)",
        ev.n_images, ev.metrics["mse"], ev.metrics["psnr"], ev.metrics["ssim"], len(skips),
    )
    return result


def reconstruct_files(
    run: Union[Run, str, Path], images: Sequence[Union[str, Path]], out: Union[str, Path]
) -> list[Path]:
    """Reconstruct the given image files, and the images of the given folders, (center crop) into
    ``out``: the PNG pairs, ``per_image.csv`` (MSE, PSNR, SSIM against the crop) and
    ``comparison.png`` (the first eight side by side); returns the files written."""
    decoded = read_images(image_paths(images))  # before the model loads: a bad file is reported at once
    if not isinstance(run, Run):
        run = load_run(run)
    out = Path(out)
    written: list[Path] = []
    cfg = run.config.data
    originals, recons, rows = [], [], []
    for i, (p, img) in enumerate(decoded):
        x8 = preprocess(img, cfg.image_size, cfg.resize, train=False)
        x = x8[None].float().div(255.0)
        y = run.reconstruct(x)
        y8 = (y[0] * 255).round().to(torch.uint8)
        rows.append({"file": str(p), **{k: float(v[0]) for k, v in M.score(y.float().cpu(), x).items()}})
        stem = f"{i}_{p.stem}"
        for kind, t in (("original", x8), ("reconstruction", y8)):
            target = out / f"{kind}_{stem}.png"
            figures.save_png(t, target)
            written.append(target)
        if len(originals) < 8:
            originals.append(x8)
            recons.append(y8.cpu())
    write_per_image(rows, out / "per_image.csv")
    labels = [f"PSNR {r['psnr']:.2f} dB\nSSIM {r['ssim']:.3f}" for r in rows[: len(originals)]]
    figures.comparison_figure(torch.stack(originals), torch.stack(recons), labels, run.describe(),
                              out / "comparison.png")
    return written + [out / "per_image.csv", out / "comparison.png"]


def image_paths(names: Sequence[Union[str, Path]]) -> list[Path]:
    """Each file as itself, each folder as its images (recursively, in a stable order)."""
    paths = []
    for path in map(Path, names):
        if path.is_dir():
            images = list_folder(path.resolve())
            if not images.records:
                raise FeatinvError(f"no images in {path}.")
            paths += [path / r.relpath for r in images.records]  # as the user typed the folder
        else:
            paths.append(path)
    return paths


def read_images(paths: Sequence[Path]) -> list[tuple[Path, Any]]:
    """(path, RGB PIL image) for each file; a file that cannot be decoded is one sentence."""
    decoded = []
    for p in paths:
        try:
            decoded.append((p, load_image(p)))
        except Exception as e:  # noqa: BLE001 - report any decode failure in one line
            raise FeatinvError(f"cannot read image {p}: {e}") from None
    return decoded


@torch.no_grad()
def run_semantics(run: Run, records: Sequence[ImageRecord], batch_size: int = 32,
                  num_workers: int = -1, judge: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The semantic scores of :class:`featinv.semantics.SemanticScorer` on ``records`` when the
    run's backbone has pretrained weights (its classifier, and the judge ``judge`` names, by
    default the run's ``backbone.judge``); None for random weights, whose classifier knows no classes."""
    from .backbones import Classifier
    from .semantics import Judge, resolve_judge

    b = run.config.backbone
    if b.weights == "random":
        return None
    judge = resolve_judge(judge or b.judge, b.name)
    classifier = Classifier(b.name, b.weights, seed=run.config.train.seed)
    return semantic_agreement(run, classifier, records, batch_size=batch_size, num_workers=num_workers,
                              judge=Judge(judge) if judge else None)


def write_semantics(run: Run) -> Optional[dict[str, Any]]:
    """``semantic.json`` of a run directory: the semantic scores on its own val split
    (pretrained weights only), which reports show beside its pixel scores."""
    _, val = split_for_config(run.config.data, SkipLog())
    result = run_semantics(run, val, run.config.train.batch_size, run.config.data.num_workers)
    if result is not None:
        RunDir(run.path).write_semantics(result)
    return result


@torch.no_grad()
def semantic_agreement(run: Run, classifier: Optional[nn.Module], records: Sequence[ImageRecord], batch_size: int = 32,
                       num_workers: int = -1, judge: Optional[nn.Module] = None) -> dict[str, Any]:
    """How much meaning survives: ``classifier``'s (the backbone's, a
    :class:`featinv.backbones.Classifier` with its own normalization) and ``judge``'s predictions
    on the reconstructions against those on the originals, as the same [0,1] center crops the
    decoder was scored on, with the thumbnail and mean-image lines
    (:class:`featinv.semantics.SemanticScorer`)."""
    nets = [m.to(run.device).eval() if m is not None else None for m in (classifier, judge)]
    scorer = SemanticScorer(*nets, stride=min(run.extractor.strides(run.config.data.image_size).values()),
                            extractor=run.extractor)
    for batch in run.loader(records, batch_size, num_workers):
        if "image" in batch:
            x = to_float(batch["image"], run.device)
            scorer.add(x, run.reconstruct(x))
    return scorer.result()
