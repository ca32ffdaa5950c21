"""`featinv demo`: the whole pipeline on the bundled sample photos, on the CPU, in minutes."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Union

from .backbones import WeightsUnavailable, get_spec
from .config import BackboneConfig, DataConfig, DecoderConfig, RunConfig, TrainConfig
from .data import sample_images_dir
from .evaluate import evaluate_run, load_run, reconstruct_files
from .train import train
from .utils import FeatinvError

log = logging.getLogger("featinv")

MARKER = ".featinv-demo"
FALLBACK_NOTE = (
    "NOTE: ImageNet weights for resnet50 were unavailable, so this demo used RANDOM backbone weights; "
    "its numbers say nothing about a pretrained network."
)


def demo_config(weights: str, epochs: int, device: str) -> RunConfig:
    samples = sample_images_dir()
    return RunConfig(
        data=DataConfig(data=str(samples / "train"), val_data=str(samples / "val"), augment=True, num_workers=0),
        backbone=BackboneConfig(name="resnet50", weights=weights),
        decoder=DecoderConfig(name="pyramid", width=64),
        # 9 photos and 3 held out: too few for the plateau rule to read; a fixed cosine budget instead.
        train=TrainConfig(epochs=epochs, batch_size=3, lr=3e-3, warmup_epochs=1.0, schedule="cosine", seed=0,
                          device=device, num_save=3),
    )


def run_demo(out: Union[str, Path] = "featinv-demo", epochs: int = 40, device: str = "cpu") -> dict[str, Any]:
    """Train a pyramid decoder on 9 bundled photos, evaluate it on 3 held-out ones, reconstruct them."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FeatinvError(f"{out} exists and is not a featinv demo folder; pass another --out.")
        shutil.rmtree(out)  # a previous demo: start afresh
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by `featinv demo`; safe to delete\n")

    weights, notes = "imagenet", []
    try:
        get_spec("resnet50").imagenet()
    except WeightsUnavailable as e:
        banner = "=" * 78
        log.warning("%s\n%s\n%s\nFalling back to --weights random.\n%s", banner, e, FALLBACK_NOTE, banner)
        weights, notes = "random", [FALLBACK_NOTE]
    cfg = demo_config(weights, epochs, device)
    cfg.notes = notes
    t0 = time.perf_counter()
    summary = train(cfg, out / "run")
    run = load_run(out / "run", device=device)
    metrics = evaluate_run(run, data=sample_images_dir() / "val", out=out / "evaluation", num_save=3)
    files = reconstruct_files(run, sorted((sample_images_dir() / "val").glob("*.jpg")), out / "reconstructions")
    elapsed = time.perf_counter() - t0
    ref = summary["reference"]
    lines = [
        "",
        f"featinv demo finished in {elapsed:.0f} s ({weights} weights).",
        f"  held-out photos: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}, MSE {metrics['mse']:.4f} "
        f"over {metrics['n_images']} images",
        "  reference lines: " + ", ".join(f"{k} {v['psnr']:.2f} dB / {v['ssim']:.3f}" for k, v in ref.items()),
        f"  run directory:   {out / 'run'}  (config.yaml, metrics.csv, summary.json, decoder.safetensors, figures/, results/)",
        f"  evaluation:      {out / 'evaluation'}  (metrics.json, per_image.csv, results/comparison.png)",
        f"  reconstructions: {out / 'reconstructions'}  ({len(files)} files)",
    ]
    if notes:
        lines.append("  " + FALLBACK_NOTE)
    print("\n".join(lines))
    return {"summary": summary, "evaluation": metrics, "seconds": elapsed, "weights": weights}
