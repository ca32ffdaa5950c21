"""What noise does to the stopping rule, on simulated curves (a model, not trained decoders).

A val-PSNR curve that saturates, ``top - gain·exp(-epoch/tau)``, plus white noise of standard
deviation ``sigma`` per epoch; each rule is applied after every epoch, and the run "stops" where
it first fires. Printed per (tau, sigma): the mean epoch at which each rule fires and how far
below the curve's top the curve then is (the PSNR a decay from there can no longer gain).

    python bench/rule_simulation.py --sigmas 0.22 0.57

The sigmas to try are the measured ones: bench/validation_noise.py prints the noise of one
run's validation curve scored with the batch-norm running averages and with recomputed statistics.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validation_noise import best_of_windows, first_firing  # noqa: E402

from featinv.schedule import plateaued  # noqa: E402


def simulate(tau: float, sigma: float, rule, runs: int, epochs: int, gain: float, window: int,
             min_gain: float, seed: int = 0) -> tuple[float, float]:
    """Mean (epoch at which ``rule`` fires, distance below the top there) over ``runs`` curves."""
    g = torch.Generator().manual_seed(seed)
    fired, short = [], []
    for _ in range(runs):
        clean = [-gain * math.exp(-(e + 1) / tau) for e in range(epochs)]
        noisy = [c + sigma * float(torch.randn((), generator=g)) for c in clean]
        e = first_firing(noisy, rule, window, min_gain) or epochs
        fired.append(e)
        short.append(-clean[e - 1])
    return sum(fired) / runs, sum(short) / runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--taus", nargs="+", type=float, default=[5, 10, 20], help="epochs to gain 63%% of the rise")
    p.add_argument("--sigmas", nargs="+", type=float, default=[0.0, 0.22, 0.57])
    p.add_argument("--gain", type=float, default=4.0, help="dB the curve rises in all")
    p.add_argument("--runs", type=int, default=400)
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--min-gain", type=float, default=0.1)
    args = p.parse_args(argv)
    rules = {"best of windows (before)": best_of_windows, "means of windows (now)": plateaued}
    print(f"| tau (epochs) | noise (dB) | " + " | ".join(f"{r}: fires at / dB below the top" for r in rules) + " |")
    print("|---|---|" + "---|" * len(rules))
    for tau in args.taus:
        for sigma in args.sigmas:
            cells = [simulate(tau, sigma, r, args.runs, args.epochs, args.gain, args.window, args.min_gain)
                     for r in rules.values()]
            print(f"| {tau:g} | {sigma:.2f} | " + " | ".join(f"{e:.1f} / {s:.2f}" for e, s in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
