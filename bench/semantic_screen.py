"""A screen of the objectives of #34 at one stride, at equal training time on the CPU: the pixel
ladder, the ladder with feature consistency, the prior head (TAEF2's decoder drawing the image)
and the prior head with feature consistency; each scored on the val photos in pixels and by the
judge (semantic.json: agreement, fd_judge, with the thumbnail and mean-image lines).

    python bench/semantic_screen.py --stage stage4 --minutes 5 --out bench-out/screen \\
        --keep bench/results/semantic-screen-stage4.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "imagenet-sample"
PRIOR = HERE.parents[1] / "shared" / "priors" / "taesd"
CANDIDATES = {
    "pixels": {},
    "pixels+feature": {"loss.feature": 0.05},
    "prior": {"decoder.name": "prior"},
    "prior+feature": {"decoder.name": "prior", "loss.feature": 0.05},
}


def candidate_config(name: str, args: argparse.Namespace):
    from featinv.cli import apply_set
    from featinv.config import RunConfig

    cfg = RunConfig()  # the package's default recipe
    cfg.data.data = str(Path(args.data).resolve())
    cfg.data.split_file = str((Path(args.data) / "split.csv").resolve())
    cfg.data.max_images = args.max_images
    cfg.backbone.name, cfg.backbone.weights, cfg.backbone.layers = "efficientnet_lite0", "imagenet", [args.stage]
    cfg.train.minutes, cfg.train.epochs, cfg.train.seed = args.minutes, args.epochs, args.seed
    cfg.train.device, cfg.train.num_save = "cpu", 4
    cfg.decoder.prior_weights = str(Path(args.prior).resolve())
    cfg.notes = [f"bench/semantic_screen.py candidate {name}"]
    return apply_set(cfg, [f"{k}={v}" for k, v in CANDIDATES[name].items()])


def main(argv: list[str] | None = None) -> int:
    from featinv.rundir import RunDir
    from featinv.training import train
    from featinv.utils import machine_class

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="stage4")
    ap.add_argument("--minutes", type=float, default=5.0, help="training passes per candidate (default 5)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--prior", type=Path, default=PRIOR)
    ap.add_argument("--max-images", type=int)
    ap.add_argument("--out", default="bench-out/semantic-screen")
    ap.add_argument("--keep", help="also write the result JSON here")
    args = ap.parse_args(argv)
    rows = []
    for name in args.candidates:
        out = Path(args.out) / f"{args.stage}-{name}-seed{args.seed}"
        t0 = time.perf_counter()
        s = train(candidate_config(name, args), out, resume=RunDir(out).has_config() and not RunDir(out).completed())
        sem = RunDir(out).read_semantics() or {}
        rows.append({"candidate": name, "psnr": s["val"]["psnr"], "ssim": s["val"]["ssim"], "epochs": s.get("epochs_run"),
                     "train_minutes": round(s.get("train_pass_s", 0) / 60, 2), "images_per_s": s.get("train_images_per_s"),
                     "parameters": s.get("decoder_parameters"), "semantic": sem,
                     "wall_s": round(time.perf_counter() - t0)})
        print(json.dumps({k: rows[-1][k] for k in ("candidate", "psnr", "epochs", "images_per_s")}
                         | {k: sem.get(k) for k in ("judge_top1_agreement", "fd_judge")}), flush=True)
    result = {"command": "python bench/semantic_screen.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_class(), "date": time.strftime("%Y-%m-%d"), "stage": args.stage,
              "minutes": args.minutes, "seed": args.seed, "rows": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    (Path(args.out) / "screen.json").write_text(text)
    if args.keep:
        Path(args.keep).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
