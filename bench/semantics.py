"""What the network sees, for the shipped pixel decoders: both faces of each depth, and why the
backbone's own agreement is no evidence.

1. Each shipped decoder (EfficientNet-Lite0, one per stage) on the 100 val photos of the
   imagenet-sample split: PSNR and SSIM, feature cosine, top-1/top-5 agreement under the backbone
   itself and under an independent judge (EfficientNet-Lite2), fd_judge; the same for the bicubic
   thumbnail at the stride and the mean image (``evaluate_run``).
2. ``refine`` from the stage-4 decoder on the first ``--refine-images`` val photos (Adam on the
   pixels until the stage-4 features match): the backbone's agreement against the judge's,
   before (the decoder) and after (the search).

    python bench/semantics.py --out /tmp/semantics --keep bench/results/semantics-shipped.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "imagenet-sample"
KEYS = ("psnr", "ssim", "feature_cosine", "top1_agreement", "top5_agreement", "judge_top1_agreement",
        "judge_top5_agreement", "fd_judge")


def val_folder(out: Path, n: int, data: Path = DATA) -> Path:
    """A folder of links to the first ``n`` val photos of split.csv (what evaluate_run reads)."""
    sys.path.insert(0, str(HERE))
    from invert import split_records

    folder = out / f"val{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for r in split_records("val", n, data):
        link = folder / Path(r.relpath).name
        if not link.exists():
            os.symlink(r.path / r.relpath if r.path.is_dir() else r.path, link)
    return folder


def shipped_rows(out: Path, images: int, judge: str, data: Path) -> list[dict]:
    from featinv.evaluate import evaluate_run, load_run
    from featinv.pretrained import shipped_decoders

    folder = val_folder(out, images, data)
    rows = []
    for stage, run_dir in shipped_decoders().items():
        t0 = time.perf_counter()
        m = evaluate_run(load_run(run_dir), data=folder, out=out / stage, num_save=0, judge=judge)
        rows.append({"stage": stage, "n_images": m["n_images"], "judge": m["judge"], **{k: m[k] for k in KEYS},
                     "reference": m["semantic_reference"], "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps({k: rows[-1][k] for k in ("stage", "psnr", "top1_agreement", "judge_top1_agreement",
                                                    "fd_judge")}), flush=True)
    return rows


def refine_rows(out: Path, images: int, steps: int, judge: str, data: Path) -> dict:
    from featinv.config import InvertConfig
    from featinv.evaluate import evaluate_run, load_run
    from featinv.invert import invert
    from featinv.pretrained import shipped_decoders

    folder = val_folder(out, images, data)
    run = shipped_decoders()["stage4"]
    start = evaluate_run(load_run(run), data=folder, out=out / "refine-start", num_save=0, judge=judge)
    files = sorted(folder.iterdir())
    found = invert(files, out / "refine", method="refine", run=run, cfg=InvertConfig(steps=steps), num_save=0,
                   judge=judge)
    pick = ("psnr", "feature_error", "top1_agreement", "judge_top1_agreement")
    return {"stage": "stage4", "n_images": found["n_images"], "steps": steps, "judge": found["judge"],
            "decoder": {k: start[k] for k in pick}, "refine": {k: found[k] if k != "feature_error" else
                                                              found["feature_error_mean"] for k in pick}}


def main(argv: list[str] | None = None) -> int:
    from featinv.utils import machine_class

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/featinv-semantics")
    ap.add_argument("--images", type=int, default=100, help="val photos for part 1 (default 100)")
    ap.add_argument("--refine-images", type=int, default=24)
    ap.add_argument("--steps", type=int, default=150, help="refine's Adam steps (default 150)")
    ap.add_argument("--judge", default="efficientnet_lite2")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--keep", help="also write the result JSON here (bench/results/semantics-shipped.json)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    result = {
        "command": "python bench/semantics.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_class(), "date": time.strftime("%Y-%m-%d"),
        "shipped": shipped_rows(out, args.images, args.judge, args.data),
        "refine": refine_rows(out, args.refine_images, args.steps, args.judge, args.data),
    }
    text = json.dumps(result, indent=2) + "\n"
    (out / "semantics.json").write_text(text)
    if args.keep:
        Path(args.keep).write_text(text)
    print(json.dumps(result["refine"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
