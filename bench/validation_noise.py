"""How noisy is the val PSNR the stopping rule reads? One training run (the default recipe at a
constant learning rate, so no rule interferes), scored twice after every epoch: with the batch-norm
running averages training leaves behind, and with statistics recomputed over a few training photos'
center crops (what `featinv train` now does before each validation, `train.val_bn_images`).

    python bench/validation_noise.py --configs all --epochs 12 --out bench-out/validation-noise

Prints both curves, the noise of each (the spread of the second differences: a straight trend has
none, white noise of standard deviation s has sqrt(6)·s), and the epoch at which each stopping rule
would have fired on each curve: the best-of-windows rule featinv used before and the means of
windows it uses now (`featinv.schedule.plateaued`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import CONFIGS, layers_for, run_config  # noqa: E402

from featinv.schedule import plateaued  # noqa: E402
from featinv.training import Trainer  # noqa: E402


def best_of_windows(history: Sequence[float], window: int, min_gain: float) -> bool:
    """The rule featinv used before: the best of the last ``window`` values against the best before."""
    if window < 1 or len(history) <= window:
        return False
    return max(history[-window:]) - max(history[:-window]) < min_gain


def first_firing(history: Sequence[float], rule: Callable[..., bool], window: int, min_gain: float) -> Optional[int]:
    """The first epoch (1-based) after which ``rule`` says the curve has plateaued."""
    return next((i for i in range(1, len(history) + 1) if rule(history[:i], window, min_gain)), None)


def noise(history: Sequence[float]) -> float:
    """Standard deviation of white noise on a locally straight curve, from its second differences."""
    d2 = [a - 2 * b + c for a, b, c in zip(history, history[1:], history[2:])]
    if len(d2) < 2:
        return float("nan")
    return math.sqrt(sum(x * x for x in d2) / len(d2) / 6)


class TwoScores(Trainer):
    """Scores each epoch with the running averages (what metrics.csv records) and again after
    recomputing the statistics; the running averages are put back, so training is unchanged."""

    images = 128
    pairs: list[tuple[float, float]] = []
    seconds: list[float] = []

    def validate(self, final: bool):
        ev = super().validate(final)
        if final:
            return ev
        norms = [m for m in self.state.scored.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
        t = time.perf_counter()
        self.recalibrate_norms(self.images)
        self.seconds.append(time.perf_counter() - t)
        recal = super().validate(final)
        for m, (mean, var, n) in zip(norms, saved):
            m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(n)
        self.pairs.append((ev.metrics["psnr"], recal.metrics["psnr"]))
        logging.info("epoch %d: val PSNR %.2f dB with the running averages, %.2f dB recomputed",
                     len(self.pairs), *self.pairs[-1])
        return ev


def run_args(description: str, configs: list[str], epochs: int, out: str) -> argparse.ArgumentParser:
    """The arguments the two rule benches share: configurations of bench/quality.py on prepared photos."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default="bench-out/cache-imagenet-sample")
    p.add_argument("--split-file", default="../shared/data/imagenet-sample/split.csv")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--configs", nargs="+", default=configs, choices=CONFIGS)
    p.add_argument("--epochs", type=int, default=epochs, help="cap on epochs")
    p.add_argument("--max-images", type=int, default=None, help="cap on training images (quick looks)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=out)
    return p


def main(argv: list[str] | None = None) -> int:
    p = run_args(__doc__.split("\n\n")[0], ["all"], 12, "bench-out/validation-noise")
    p.add_argument("--images", type=int, default=128, help="training photos the statistics are recomputed over")
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--min-gain", type=float, default=0.1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.minutes, args.extra_data, args.set = None, [], None
    for name in args.configs:
        out = Path(args.out) / name
        cfg = run_config(name, layers_for(name, args.backbone), args)
        cfg.train.schedule = "constant"
        cfg.train.val_bn_images = 0  # the scripted validation does both
        cfg.train.precise_bn = False
        TwoScores.images, TwoScores.pairs, TwoScores.seconds = args.images, [], []
        TwoScores(cfg, out).fit()
        running = [a for a, _ in TwoScores.pairs]
        recal = [b for _, b in TwoScores.pairs]
        with open(out / "two_scores.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "val_psnr_running", "val_psnr_recomputed"])
            w.writerows([i + 1, f"{a:.4f}", f"{b:.4f}"] for i, (a, b) in enumerate(TwoScores.pairs))
        print(f"\n{name}: {args.epochs} epochs at a constant rate, statistics recomputed over {args.images} photos")
        print("| epoch | running averages | recomputed | difference |\n|---|---|---|---|")
        for i, (a, b) in enumerate(TwoScores.pairs):
            print(f"| {i + 1} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
        for label, h in (("running averages", running), ("recomputed", recal)):
            old = first_firing(h, best_of_windows, args.window, args.min_gain)
            new = first_firing(h, plateaued, args.window, args.min_gain)
            print(f"{label}: noise {noise(h):.2f} dB; the best-of-windows rule fires after epoch {old}, "
                  f"the means-of-windows rule after epoch {new}")
        rows = [r for r in csv.DictReader(open(out / "metrics.csv"))]
        epoch_s = sum(float(r["epoch_time_s"]) for r in rows) / len(rows)
        print(f"recomputing the statistics took {sum(TwoScores.seconds) / len(TwoScores.seconds):.1f} s per epoch "
              f"(an epoch with both validations: {epoch_s:.0f} s)")
        print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
