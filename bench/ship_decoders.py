"""Copy the single-stage decoders of a bench/quality.py run into the package, so that
`featinv demo` (and anyone) can show what each depth keeps without training first.

    python bench/quality.py --data bench-out/cache-imagenet-sample \
        --split-file ../shared/data/imagenet-sample/split.csv --minutes 20      # trains them
    python bench/ship_decoders.py bench-out/quality                          # copies them

Each becomes a minimal run directory under src/featinv/assets/decoders/efficientnet_lite0-stageN/
(config.yaml, decoder.json, decoder.safetensors in float16, summary.json, metrics.csv), which
`featinv.load_run` and `featinv evaluate` read like any run. Weights are stored as float16 (half
the size; the decoder computes in float32 or bf16 anyway) and the data paths of config.yaml are
replaced by where the photos came from.
"""

from __future__ import annotations

import argparse
import sys
import json
import shutil
from pathlib import Path

from featinv.cache import is_cache
from featinv.rundir import RunDir


HERE = Path(__file__).resolve().parent
TARGET = HERE.parent / "src" / "featinv" / "assets" / "decoders"
STAGES = {"stride4": "stage1", "stride8": "stage2", "stride16": "stage3", "stride32": "stage4"}
KEEP_SUMMARY = ("featinv_version", "torch_version", "backbone", "layers", "strides", "feature_shapes", "decoder", "decoder_parameters", "epochs_run",
                "train_images", "val_images", "val", "train_eval", "converged", "stop_reason", "train_pass_s",
                "reference", "command", "precision", "device")


def source_of(folder: Path) -> str:
    """Where a training folder's photos came from: a prepared cache names its source folder."""
    source = Path(json.loads((folder / "meta.json").read_text())["source"]) if is_cache(folder) else folder
    return f"{source.name} (../shared/data/{source.name})"


def ship(bench_out: Path, target: Path = TARGET) -> list[Path]:
    written = []
    for config, stage in STAGES.items():
        src = RunDir(bench_out / config)
        summary = src.read_summary()
        if summary.get("status") != "completed" or summary["backbone"]["backbone"] != "efficientnet_lite0":
            raise SystemExit(f"{src} is not a finished efficientnet_lite0 run.")
        dst = RunDir(target / f"efficientnet_lite0-{stage}")
        if dst.path.exists():
            shutil.rmtree(dst.path)
        dst.path.mkdir(parents=True)
        cfg = src.read_config()
        cfg.data.data = "imagenet-sample (../shared/data/imagenet-sample), train split of split.csv"
        cfg.data.split_file, cfg.data.val_data = "split.csv", None
        cfg.data.extra_data = [source_of(Path(p)) for p in cfg.data.extra_data]
        dst.write_config(cfg)
        dst.write_metrics(src.read_metrics(), list(src.read_metrics()[0]))
        meta, tensors = src.read_decoder()
        meta.pop("format", None)  # written again by write_decoder
        dst.write_decoder({k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}, meta)
        kept = {k: summary[k] for k in KEEP_SUMMARY if k in summary}
        dst.write_summary({"status": "completed", **kept})
        written.append(dst.path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench_out", type=Path, help="the --out folder of bench/quality.py")
    p.add_argument("--dest", type=Path, default=TARGET, help="where the decoders go (default: the package's assets)")
    args = p.parse_args(argv)
    for d in ship(args.bench_out, args.dest):
        print(f"{d}  {sum(f.stat().st_size for f in d.iterdir()) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
