"""Does the new stopping rule pay? One configuration of bench/quality.py trained twice with the
default recipe: as featinv did before (the best-of-windows rule, each epoch scored with the
batch-norm running averages) and as it does now (means of windows, statistics recomputed before
each validation). Same seed, same photos; precise BN at the end in both.

    python bench/stopping_rule.py --configs stride16 --out bench-out/stopping-rule

Prints, per configuration, each variant's val PSNR/SSIM, whether it converged, its epochs and
minutes, and the paired per-image difference (now − before) with a 95% bootstrap interval.
Finished runs are reused.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import layers_for, paired_bootstrap, per_image_psnr, run_config, train_or_reuse  # noqa: E402
from validation_noise import best_of_windows, run_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = run_args(__doc__.split("\n\n")[0], ["stride16"], 40, "bench-out/stopping-rule")
    p.add_argument("--minutes", type=float, default=None, help="cap on training minutes (default: none)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.extra_data, args.set = [], None
    for name in args.configs:
        rows = {}
        for variant in ("before", "now"):
            cfg = run_config(name, layers_for(name, args.backbone), args)
            out = Path(args.out) / variant / name
            if variant == "before":
                cfg.train.val_bn_images = 0
                cfg.notes.append("the best-of-windows stopping rule (bench/stopping_rule.py)")
                # featinv.schedule.decide_decay looks the rule up when it is called
                with mock.patch("featinv.schedule.plateaued", best_of_windows):
                    rows[variant] = train_or_reuse(cfg, out)
            else:
                rows[variant] = train_or_reuse(cfg, out)
            rows[variant]["dir"] = out
        print(f"\n{name}: | variant | val PSNR / SSIM | converged | epochs | minutes of training passes |\n|---|---|---|---|---|")
        for variant, s in rows.items():
            m = s["val"]
            print(f"| {variant} | {m['psnr']:.2f} / {m['ssim']:.3f} | {s['converged']} | {s['epochs_run']} | "
                  f"{s['train_pass_s'] / 60:.1f} |")
        d, lo, hi = paired_bootstrap(*(per_image_psnr(rows[v]["dir"] / "results" / "per_image.csv") for v in ("now", "before")))
        print(f"now - before: {d:+.2f} dB [{lo:+.2f}, {hi:+.2f}] (paired, 95% bootstrap); load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
