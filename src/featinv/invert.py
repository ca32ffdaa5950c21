"""A second way to invert: search the image whose features match (Mahendran & Vedaldi 2015).

``optimize`` starts from the mean image (or noise); ``refine`` starts from a trained decoder's
reconstruction and keeps, per image, the iterate with the lowest feature error (it never sees
the original). Both minimise, per image, the normalised feature distance plus a total-variation
prior and an α-norm prior, by Adam on the pixels in float32, projected onto [0,1] after every
step, with a cosine step-size schedule. Images are independent: the objective of a batch is the
sum of its images' objectives, so a batch gives what its images give one by one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from . import figures
from . import metrics as M
from .metrics import feature_distance
from .backbones import FeatureExtractor, get_spec
from .config import INVERSIONS, InvertConfig
from .data import ImageDataset, ImageRecord, SkipLog, find_images, make_loader, to_float, usable_records
from .evaluate import agreement, load_run
from .rundir import read_csv, write_csv
from .utils import FeatinvError, atomic_write_text, progress_enabled, resolve_device
from .utils import progress_bar as tqdm

log = logging.getLogger("featinv")

METHODS = INVERSIONS
# The step size of each method when --lr is not given (bench/invert.py --choose, training photos).
DEFAULT_LR = {"optimize": 0.02, "refine": 0.0005}


def feature_error(extractor: FeatureExtractor, x_hat: torch.Tensor, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The feature error of reconstructions ``x_hat`` against the originals' features ``target``."""
    with torch.no_grad():
        return feature_distance(extractor(x_hat.float()), target)


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per image: the mean over pixels of (dx² + dy²)^(β/2) (Mahendran & Vedaldi's TV_β)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2) + 1e-8).pow(beta / 2).flatten(1).mean(1)


def alpha_norm(x: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """Per image: the mean of |x − 0.5|^α, which keeps pixels from the box's edges."""
    return (x - 0.5).abs().pow(alpha).flatten(1).mean(1)


def objective(extractor: FeatureExtractor, x: torch.Tensor, target: dict[str, torch.Tensor],
              cfg: InvertConfig, shift: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: (the whole objective, its feature part averaged over layers), at ``x`` (rolled by ``shift``)."""
    xin = torch.roll(x, shifts=shift, dims=(-2, -1)) if shift else x
    fe = M.mean_over_taps(feature_distance(extractor(xin), target))
    obj = fe + cfg.tv_weight * total_variation(x, cfg.tv_beta)
    if cfg.alpha_weight:
        obj = obj + cfg.alpha_weight * alpha_norm(x, cfg.alpha)
    return obj, fe


def search(extractor: FeatureExtractor, target: dict[str, torch.Tensor], start: torch.Tensor,
           cfg: InvertConfig, on_step: Optional[Callable[[int, torch.Tensor], None]] = None,
           ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Minimise the objective from ``start`` (B×3×H×W in [0,1]); returns, per image, the iterate
    with the lowest feature error (the start included), that error, and the mean objective per step.
    ``on_step(step, x)`` sees every iterate (tests, progress)."""
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR["optimize"]
    x = start.detach().float().clone().clamp_(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    best = x.detach().clone()
    best_fe = torch.full((len(x),), math.inf, device=x.device)
    g = torch.Generator().manual_seed(cfg.seed)
    history = []
    for step in range(cfg.steps + 1):
        if on_step is not None:
            on_step(step, x.detach())
        shift = tuple(torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=g).tolist()) if cfg.jitter else None
        obj, fe = objective(extractor, x, target, cfg, shift)
        if not shift:  # the feature error of this very iterate: keep the best so far
            with torch.no_grad():
                better = fe.detach() < best_fe
                best[better], best_fe[better] = x.detach()[better], fe.detach()[better]
        history.append(float(obj.detach().mean()))
        if step == cfg.steps:
            break
        for group in opt.param_groups:  # cosine from lr to lr/100
            group["lr"] = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.steps))))
        opt.zero_grad(set_to_none=True)
        obj.sum().backward()  # a sum over images: each image's gradient is its own
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)  # the box constraint, after every step
    if cfg.jitter:  # jittered steps were not scored: score the final iterate as it is
        fe = M.mean_over_taps(feature_error(extractor, x.detach(), target))
        better = fe < best_fe
        best[better], best_fe[better] = x.detach()[better], fe[better]
    return best, best_fe, history


def start_image(x: torch.Tensor, cfg: InvertConfig, indices: Sequence[int]) -> torch.Tensor:
    """``optimize``'s start for images ``indices``: ImageNet's mean colour everywhere, or noise
    drawn per image from (seed, index), so a batch starts where its images would one by one."""
    if cfg.init == "noise":
        gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + int(i)) for i in indices]
        return torch.stack([torch.rand(x.shape[1:], generator=g) for g in gens]).to(x.device)
    colour = torch.tensor([0.485, 0.456, 0.406], device=x.device)
    return colour.view(1, 3, 1, 1).expand_as(x).clone()


# ── a folder of images → the files `evaluate` writes, plus the feature error ─────────────────


def invert_images(
    extractor: FeatureExtractor,
    records: Sequence[ImageRecord],
    out: Union[str, Path],
    method: str = "optimize",
    cfg: InvertConfig = InvertConfig(),
    decoder: Optional[torch.nn.Module] = None,
    image_size: int = 224,
    resize: int = 256,
    batch_size: int = 8,
    num_save: int = 8,
    device: torch.device = torch.device("cpu"),
    title: str = "",
    semantic: bool = True,
    extra: Optional[dict[str, Any]] = None,
    judge: str = "auto",
) -> dict[str, Any]:
    """Invert every image of ``records`` (center crops) and score it; ``refine`` starts from
    ``decoder``'s reconstruction. Per-image rows are written after every batch and an interrupted
    run resumes after the images it finished. Writes metrics.json, per_image.csv, results/.
    ``semantic``: with pretrained weights, also whether the backbone's classifier and the
    independent ``judge`` (:func:`featinv.semantics.resolve_judge`) give original and result the
    same class (top-1 / top-5 agreement, per image as for decoders; no ``fd_judge``, since the rows
    are written and resumed per image). ``extra``: more keys for metrics.json (a sweep's reference lines)."""
    if method == "refine" and decoder is None:
        raise FeatinvError("--method refine starts from a trained decoder's reconstruction: pass --run RUN.")
    if cfg.lr is None:
        cfg = dataclasses.replace(cfg, lr=DEFAULT_LR[method])
    out = Path(out)
    layers = list(extractor.layers)
    source = {"backbone": extractor.weights_info["backbone"], "weights": extractor.weights_info["weights"],
              "layers": layers}
    _check_same_search(out, {"method": method, **source, "settings": asdict(cfg)})
    rows = _done_rows(out / "per_image.csv")
    done = {row["file"] for row in rows}
    todo = [i for i, r in enumerate(records) if r.relpath not in done]
    classifier = _classifier(extractor, device) if semantic else None
    judge_net = _judge(extractor, judge, device) if classifier is not None else None
    loader = make_loader(ImageDataset([records[i] for i in todo], image_size, resize, train=False), batch_size,
                         shuffle=False, num_workers=0)
    for batch in tqdm(loader, desc=method, unit="batch", disable=not progress_enabled()):
        if "image" not in batch:
            continue
        x = to_float(batch["image"], device)
        index = [todo[int(i)] for i in batch["index"]]
        t0 = time.perf_counter()
        with torch.no_grad():
            target = extractor(x)
            # refine: the decoder reads the features just computed (one backbone pass, as reconstruct's)
            start = decoder(target).float().clamp(0, 1) if method == "refine" else start_image(x, cfg, index)
        best, _, _ = search(extractor, target, start, cfg)
        took = (time.perf_counter() - t0) / len(x)
        errors = feature_error(extractor, best, target)
        scores = M.score(best, x)
        if classifier is not None:
            with torch.no_grad():
                scores["top1_agreement"], scores["top5_agreement"] = agreement(classifier(x), classifier(best))
                if judge_net is not None:
                    scores["judge_top1_agreement"], scores["judge_top5_agreement"] = agreement(
                        judge_net(x)["logits"], judge_net(best)["logits"])
        for j, i in enumerate(index):
            row = {"file": records[i].relpath, **{k: float(v[j]) for k, v in scores.items()},
                   **{f"fe_{k}": float(errors[k][j]) for k in layers}, "seconds": took}
            row["feature_error"] = sum(row[f"fe_{k}"] for k in layers) / len(layers)
            rows.append(row)
            if i < num_save:
                figures.save_png(batch["image"][j], out / "results" / f"original_{i}.png")
                figures.save_png((best[j] * 255).round().to(torch.uint8).cpu(), out / "results" / f"reconstruction_{i}.png")
        write_csv(out / "per_image.csv", rows, list(rows[0]))
    info = {**source, "image_size": image_size, "strides": extractor.strides(image_size),
            "judge": judge_net.name if judge_net is not None else None, **(extra or {})}
    return _summarise(rows, records, out, method, cfg, info, num_save, title)


def _check_same_search(out: Path, plan: dict[str, Any]) -> None:
    """``inversion.json`` records what a folder's rows were searched with; resuming with anything
    else would mix two searches in one table, so it is refused."""
    path = out / "inversion.json"
    if not path.is_file():
        atomic_write_text(path, json.dumps(plan, indent=2) + "\n")
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    changed = [k for k in plan if k != "settings" and old.get(k) != plan[k]]
    changed += [k for k, v in plan["settings"].items() if old.get("settings", {}).get(k) != v]
    if changed:
        raise FeatinvError(f"{out} holds an inversion searched with other {', '.join(changed)}; "
                           "use another --out to search with these settings.")


def _classifier(extractor: FeatureExtractor, device: torch.device) -> Optional[torch.nn.Module]:
    """The backbone's own classifier (pretrained weights only: random ones know no classes)."""
    from .backbones import Classifier

    w = extractor.weights_info
    return None if w["weights"] == "random" else Classifier(w["backbone"], w["weights"]).to(device).eval()


def _judge(extractor: FeatureExtractor, judge: str, device: torch.device) -> Optional[torch.nn.Module]:
    """The independent judge of the semantic scores, or None for ``judge`` none."""
    from .semantics import Judge, resolve_judge

    name = resolve_judge(judge, extractor.weights_info["backbone"])
    return Judge(name).to(device) if name else None


def _done_rows(path: Path) -> list[dict[str, Any]]:
    """The rows an interrupted run already wrote (numbers as floats)."""
    if not path.is_file():
        return []
    return [{k: (v if k == "file" else float(v)) for k, v in r.items()} for r in read_csv(path)]


def _summarise(rows: list[dict[str, Any]], records: Sequence[ImageRecord], out: Path, method: str,
               cfg: InvertConfig, info: dict[str, Any], num_save: int, title: str) -> dict[str, Any]:
    if not rows:
        raise FeatinvError("no image could be decoded for the inversion.")
    order = {r.relpath: i for i, r in enumerate(records)}
    rows.sort(key=lambda r: order.get(r["file"], len(order)))
    write_csv(out / "per_image.csv", rows, list(rows[0]))
    n, layers = len(rows), info["layers"]
    # a column every row has (agreement is missing from rows an older version wrote)
    mean = {k: sum(r[k] for r in rows) / n for k in rows[0] if k != "file" and all(k in r for r in rows)}
    result = {
        "method": method, "n_images": n, "mse": mean["mse"], "psnr": mean["psnr"], "ssim": mean["ssim"],
        "feature_error": {k: mean[f"fe_{k}"] for k in layers}, "feature_error_mean": mean["feature_error"],
        "seconds_per_image": mean["seconds"], "top1_agreement": mean.get("top1_agreement"),
        "top5_agreement": mean.get("top5_agreement"), "judge_top1_agreement": mean.get("judge_top1_agreement"),
        "judge_top5_agreement": mean.get("judge_top5_agreement"), **info, "settings": asdict(cfg),
    }
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    saved = [i for i in range(min(num_save, len(records))) if (out / "results" / f"reconstruction_{i}.png").is_file()]
    if saved:
        by_file = {r["file"]: r for r in rows}
        load = figures.load_png_tensor
        labels = [f"PSNR {by_file[records[i].relpath]['psnr']:.2f} dB\nfeature error "
                  f"{by_file[records[i].relpath]['feature_error']:.3f}" for i in saved]
        figures.comparison_figure(torch.stack([load(out / "results" / f"original_{i}.png") for i in saved]),
                                  torch.stack([load(out / "results" / f"reconstruction_{i}.png") for i in saved]),
                                  labels, f"{title} — {method}", out / "results" / "comparison.png")
    log.info("%s: %d images, PSNR %.2f dB, SSIM %.4f, feature error %.4f, %.1f s per image",
             method, n, result["psnr"], result["ssim"], result["feature_error_mean"], result["seconds_per_image"])
    return result


def _records(data: Sequence[Union[str, Path]], max_images: Optional[int]) -> list[ImageRecord]:
    """A folder or prepared cache (one argument), or image files."""
    if len(data) == 1 and Path(data[0]).is_dir():
        recs = usable_records(find_images(data[0]), SkipLog())
    else:
        missing = [str(f) for f in data if not Path(f).is_file()]
        if missing:
            raise FeatinvError(f"--data: {', '.join(missing[:3])} is not an image file or a folder.")
        recs = [ImageRecord(Path(f).resolve(), Path(f).name) for f in data]
    if not recs:
        raise FeatinvError(f"no usable images in {data[0]}.")
    return recs[:max_images] if max_images else recs


def plain_extractor(name: str, weights: str, layers: Optional[Sequence[str]], seed: int,
                    device: torch.device) -> tuple[FeatureExtractor, str]:
    """The backbone to search through when no trained run gives it, and its title."""
    taps = list(layers) if layers else get_spec(name).default_layers
    extractor = FeatureExtractor(name, weights, taps, seed=seed).to(device).eval()
    return extractor, f"{name} ({extractor.weights_info['weights']} weights), layers {'+'.join(taps)}"


def invert(
    data: Sequence[Union[str, Path]],
    out: Union[str, Path],
    backbone: Optional[str] = None,
    weights: Optional[str] = None,
    layers: Optional[Sequence[str]] = None,
    method: str = "optimize",
    run: Optional[Union[str, Path]] = None,
    cfg: InvertConfig = InvertConfig(),
    batch_size: int = 8,
    max_images: Optional[int] = None,
    num_save: int = 8,
    device: str = "auto",
    judge: str = "auto",
) -> dict[str, Any]:
    """``featinv invert`` from Python: the images of ``data`` (a folder, a cache or files) inverted
    through ``backbone``'s ``layers`` (a ``run``'s, for ``refine``); returns metrics.json's content."""
    if method not in METHODS:
        raise FeatinvError(f"--method must be one of {', '.join(METHODS)}, got {method!r}.")
    dev = resolve_device(device)
    records = _records(data, max_images)  # the images first: a missing folder is not a missing model
    decoder, image_size, resize = None, 224, 256
    if run is not None:
        r = load_run(run, device=str(dev))
        b = r.config.backbone
        for given, saved, flag in ((backbone, b.name, "--backbone"), (weights, b.weights, "--weights"),
                                   (list(layers) if layers else None, b.layers, "--layers")):
            if given is not None and given != saved:
                raise FeatinvError(f"--run {run} was trained with {flag} {saved}, not {given}; drop {flag} or pass another run.")
        extractor, decoder, title = r.extractor, r.decoder, r.describe()
        image_size, resize = r.config.data.image_size, r.config.data.resize
    elif method == "refine":
        raise FeatinvError("--method refine starts from a trained decoder's reconstruction: pass --run RUN.")
    else:
        extractor, title = plain_extractor(backbone or "resnet50", weights or "imagenet", layers, cfg.seed, dev)
    return invert_images(extractor, records, out, method, cfg, decoder, image_size, resize, batch_size, num_save, dev,
                         title, judge=judge)
