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
import json
import shutil
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
TARGET = HERE.parent / "src" / "featinv" / "assets" / "decoders"
STAGES = {"stride4": "stage1", "stride8": "stage2", "stride16": "stage3", "stride32": "stage4"}
KEEP_SUMMARY = ("featinv_version", "torch_version", "backbone", "layers", "strides", "feature_shapes", "decoder", "decoder_parameters", "epochs_run",
                "train_images", "val_images", "val", "train_eval", "converged", "stop_reason", "train_pass_s",
                "reference", "command", "precision", "device")


def ship(bench_out: Path, target: Path = TARGET) -> list[Path]:
    written = []
    for config, stage in STAGES.items():
        src = bench_out / config
        summary = json.loads((src / "summary.json").read_text())
        if summary.get("status") != "completed" or summary["backbone"]["backbone"] != "efficientnet_lite0":
            raise SystemExit(f"{src} is not a finished efficientnet_lite0 run.")
        dst = target / f"efficientnet_lite0-{stage}"
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        cfg = yaml.safe_load((src / "config.yaml").read_text())
        cfg["data"].update(data="imagenet-sample (../shared/data/imagenet-sample), train split of split.csv",
                           split_file="split.csv", val_data=None, extra_data=[])
        (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        shutil.copy(src / "decoder.json", dst / "decoder.json")
        shutil.copy(src / "metrics.csv", dst / "metrics.csv")
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(src / "decoder.safetensors")).items()}
        save_file(tensors, str(dst / "decoder.safetensors"))
        kept = {k: summary[k] for k in KEEP_SUMMARY if k in summary}
        (dst / "summary.json").write_text(json.dumps({"status": "completed", **kept}, indent=2) + "\n")
        written.append(dst)
    return written


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench_out", type=Path, help="the --out folder of bench/quality.py")
    args = p.parse_args()
    for d in ship(args.bench_out):
        print(f"{d}  {sum(f.stat().st_size for f in d.iterdir()) / 1e6:.2f} MB")
