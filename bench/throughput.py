"""Training throughput, in one run on the same images and machine:

(a) a faithful re-creation of the original project's loop: JPEG decode per step through
    torchvision's ImageFolder, num_workers=0, batch 8, fp32, forward hooks on the full
    ResNet-50, maps concatenated at 7×7 into the `seed` decoder, Adam;
(b) the `seed` decoder trained by featinv (prepared cache, loader workers, channels_last,
    the default precision, a truncated backbone);
(c) featinv's default configuration (the `pyramid` decoder);
(d) (c) with `--cache-features`: later epochs read the backbone's outputs from disk.

(b) and (c) run featinv's own `train()`; their steady-state rate is the images/s of the last
epoch (the first epoch is the warm-up). Each variant runs in its own process, so its peak
memory (max RSS on the CPU, max allocated on a GPU) is its own. The FLOP rate of (c)'s training
step is compared with the practical peak of a large matmul measured in the same run.

    python bench/throughput.py --device cpu --images 96
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/original.py
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "imagenet-sample"
BACKBONE_LAYERS = {"layer1.2.relu": "layer1", "layer2.3.relu": "layer2", "layer3.5.relu": "layer3", "layer4.2.relu": "layer4"}


def _peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux


def original_loop(folder: str, device_name: str, warmup: int, steps: int, out: mp.Queue) -> None:
    """(a) The original training loop (bench/original.py), timed after ``warmup`` steps."""
    import torchvision
    from torchvision import transforms

    from original import IMAGENET_MEAN, IMAGENET_STD, OriginalLoop

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)  # same compute as the pretrained one
    loop = OriginalLoop(model, {key: node for node, key in BACKBONE_LAYERS.items()},
                        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD), device)
    clock = {"t0": 0.0}

    def stop(done: int) -> bool:
        if done == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            clock["t0"] = time.perf_counter()
        return done >= warmup + steps

    loop.run(folder, stop)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out.put({"images_per_s": 8 * steps / (time.perf_counter() - clock["t0"]), "peak_mib": _peak_memory(device)})


def featinv_run(cache: str, val: str, decoder: str, device_name: str, batch: int, epochs: int, precision: str,
                run_dir: str, cache_features: bool, out: mp.Queue) -> None:
    """(b)/(c): featinv's own training, reading the steady-state rate from metrics.csv."""
    import logging

    from featinv.config import BackboneConfig, DataConfig, DecoderConfig, RunConfig, TrainConfig
    from featinv.rundir import RunDir
    from featinv.train import train

    logging.basicConfig(level=logging.WARNING)
    cfg = RunConfig(
        data=DataConfig(data=cache, val_data=val, augment=False),
        backbone=BackboneConfig(name="resnet50", weights="random"),
        decoder=DecoderConfig(name=decoder),
        train=TrainConfig(epochs=epochs, batch_size=batch, device=device_name, precision=precision, num_save=0,
                          checkpoint_every=0, cache_features=cache_features),
    )
    summary = train(cfg, run_dir)
    rows = RunDir(run_dir).read_metrics()
    out.put({"images_per_s": float(rows[-1]["train_images_per_s"]), "peak_mib": _peak_memory(torch.device(device_name)),
             "precision": summary["precision"]})


def in_subprocess(fn, *args) -> dict:
    ctx = mp.get_context("spawn")  # a fresh process: its own peak memory, no inherited threads
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 10) -> float:
    """Practical peak FLOP/s: a large square matmul, best of ``reps``."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def step_flops(device: torch.device, precision: str, batch: int = 4) -> float:
    """FLOPs of one default-configuration training step, per image (forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from featinv.backbones import FeatureExtractor
    from featinv.config import DecoderConfig
    from featinv.decoders import build_decoder
    from featinv.utils import autocast

    fe = FeatureExtractor("resnet50", weights="random").to(device)
    dc = DecoderConfig()  # the default decoder, as (c) trains it
    dec = build_decoder(dc.name, fe.feature_shapes(224), 224, **dc.options()).to(device)
    x = torch.rand(batch, 3, 224, 224, device=device)
    with FlopCounterMode(display=False) as counter:
        with autocast(precision, device):
            with torch.no_grad():
                feats = fe(x)
            y = dec(feats)
        torch.nn.functional.mse_loss(y.float(), x).backward()
    return counter.get_total_flops() / batch


def profile_step(device: torch.device, precision: str, batch: int, steps: int = 3) -> str:
    """torch.profiler table (top operators by self time) of the default configuration's step."""
    from torch.profiler import ProfilerActivity, profile

    from featinv.backbones import FeatureExtractor
    from featinv.config import DecoderConfig
    from featinv.decoders import build_decoder
    from featinv.utils import autocast

    fe = FeatureExtractor("resnet50", weights="random").to(device, memory_format=torch.channels_last)
    dc = DecoderConfig()
    dec = build_decoder(dc.name, fe.feature_shapes(224), 224, **dc.options()).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(dec.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast(precision, device):
            with torch.no_grad():
                feats = fe(x)
            y = dec(feats)
        loss = torch.nn.functional.mse_loss(y.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder of JPEGs (default: ../shared/data/imagenet-sample)")
    ap.add_argument("--images", type=int, default=96, help="training images (default 96)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="featinv's precision for (b) and (c) (default auto)")
    ap.add_argument("--batch-size", type=int, default=16, help="featinv's batch size for (b) and (c)")
    ap.add_argument("--epochs", type=int, default=2, help="featinv epochs; the last one is measured")
    ap.add_argument("--warmup", type=int, default=2, help="(a) steps excluded from timing")
    ap.add_argument("--steps", type=int, default=8, help="(a) timed steps of batch 8")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of (c)'s training step")
    args = ap.parse_args()

    from featinv.cache import prepare
    from featinv.utils import resolve_device, resolve_precision

    device = resolve_device(args.device)
    src = Path(args.data)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[: args.images]
    if len(files) < args.images:
        sys.exit(f"{src} holds only {len(files)} images; pass --data or a smaller --images.")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; {len(files)} images from {src}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "imagefolder" / "all"  # ImageFolder needs a class level
        folder.mkdir(parents=True)
        for f in files:
            (folder / f.name).symlink_to(f.resolve())
        val = tmp / "val"
        val.mkdir()
        for f in files[:8]:
            (val / f.name).symlink_to(f.resolve())
        t = time.perf_counter()
        prepare(folder.parent, tmp / "cache", size=224)
        prep_s = time.perf_counter() - t

        a = in_subprocess(original_loop, str(folder.parent), str(device), args.warmup, args.steps)
        b = in_subprocess(featinv_run, str(tmp / "cache"), str(val), "seed", str(device), args.batch_size,
                          args.epochs, args.precision, str(tmp / "run_b"), False)
        c = in_subprocess(featinv_run, str(tmp / "cache"), str(val), "pyramid", str(device), args.batch_size,
                          args.epochs, args.precision, str(tmp / "run_c"), False)
        d = in_subprocess(featinv_run, str(tmp / "cache"), str(val), "pyramid", str(device), args.batch_size,
                          args.epochs, args.precision, str(tmp / "run_d"), True)
    precision = resolve_precision(args.precision, device)
    peak = matmul_peak(device, torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32)
    flops = step_flops(device, precision)
    achieved = flops * c["images_per_s"]
    print(f"prepare (decode once, {len(files)} images): {prep_s:.1f} s, {len(files) / prep_s:.1f} images/s")
    print(f"{'variant':<64} {'images/s':>9} {'peak MiB':>9}")
    for label, r in (
        ("(a) original loop (ImageFolder decode per step, batch 8, fp32)", a),
        (f"(b) seed decoder, featinv engineering ({b['precision']}, batch {args.batch_size})", b),
        (f"(c) featinv default: pyramid decoder ({c['precision']}, batch {args.batch_size})", c),
        ("(d) (c) + --cache-features (epochs after the first)", d),
    ):
        print(f"{label:<64} {r['images_per_s']:>9.2f} {r['peak_mib']:>9.0f}")
    print(f"ratio b/a: {b['images_per_s'] / a['images_per_s']:.2f}x   ratio c/a: {c['images_per_s'] / a['images_per_s']:.2f}x"
          f"   ratio d/a: {d['images_per_s'] / a['images_per_s']:.2f}x")
    print(f"(c) training step: {flops / 1e9:.1f} GFLOP per image → {achieved / 1e9:.1f} GFLOP/s achieved; "
          f"{precision} matmul peak measured now: {peak / 1e9:.1f} GFLOP/s → {100 * achieved / peak:.0f}% of peak")
    if args.profile:
        print(f"torch.profiler, 3 steps of (c) at batch {args.batch_size} ({precision}):")
        print(profile_step(device, precision, args.batch_size))
    print(json.dumps({"a": a, "b": b, "c": c, "d": d, "prepare_s": prep_s, "step_gflop_per_image": flops / 1e9,
                      "matmul_peak_gflops": peak / 1e9, "device": name}))


if __name__ == "__main__":
    main()
