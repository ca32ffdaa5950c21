"""What precise BN changes: finished runs re-scored after their decoder's batch-norm statistics are
recomputed (`featinv.training.recalibrate_norms`, what `featinv train` now does after the last epoch),
against the same runs as they were saved. The run directories are only read.

    python bench/precise_bn.py bench-out/quality/stride4 bench-out/quality/all ...

For each run: val PSNR/SSIM as saved (re-scored here, so both columns come from this script), then
after recalibration over (at most 4096) of its training photos' center crops, and the paired
per-image difference with a 95% bootstrap interval.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import paired_bootstrap  # noqa: E402


def rescore(run_dir: Path) -> dict:
    import featinv
    from featinv.data import SkipLog, split_for_config
    from featinv.evaluate import evaluate_loader
    from featinv.training import precise_bn_records, recalibrate_norms

    run = featinv.load_run(run_dir, device="cpu")
    cfg = run.config
    train, val = split_for_config(cfg.data, SkipLog())

    def score():
        ev = evaluate_loader(run.extractor, run.decoder, run.loader(val, cfg.train.batch_size), val, run.device,
                             precision=run.precision, channels_last=cfg.train.channels_last)
        return ev.metrics, {r["file"]: r["psnr"] for r in ev.per_image}

    before, per_before = score()
    recs = precise_bn_records(train)
    t = time.perf_counter()
    recalibrate_norms(run.decoder, run.extractor, run.loader(recs, cfg.train.batch_size), run.device,
                      run.precision, cfg.train.channels_last)
    took = time.perf_counter() - t
    after, per_after = score()
    diff = paired_bootstrap(per_after, per_before)
    return {"run": str(run_dir), "before": before, "after": after, "diff": diff, "images": len(recs), "seconds": took}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    rows = [rescore(r) for r in args.runs]
    print(f"| run | as saved: val PSNR / SSIM | precise BN | difference (95% bootstrap) | photos, s |")
    print("|---|---|---|---|---|")
    for r in rows:
        b, a, (d, lo, hi) = r["before"], r["after"], r["diff"]
        print(f"| {r['run']} | {b['psnr']:.2f} / {b['ssim']:.3f} | {a['psnr']:.2f} / {a['ssim']:.3f} | "
              f"{d:+.2f} dB [{lo:+.2f}, {hi:+.2f}] | {r['images']}, {r['seconds']:.0f} |")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
