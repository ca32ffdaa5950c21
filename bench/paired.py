"""The paired per-image difference between two finished runs, A − B, with its 95% bootstrap
interval: on the val split (``results/per_image.csv``) and on each second test domain both runs
were scored on by `bench/quality.py` (``test-*/per_image.csv``). The run directories are only read.

    python bench/paired.py bench-out/extra-cpu/extra/stride4 bench-out/extra-cpu/base/stride4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import paired_bootstrap, per_image_psnr  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="run directory A")
    p.add_argument("b", type=Path, help="run directory B")
    args = p.parse_args(argv)
    parts = [("val", Path("results/per_image.csv"))]
    parts += [(d.name[5:], d.relative_to(args.a) / "per_image.csv") for d in sorted(args.a.glob("test-*"))]
    found = 0
    for name, rel in parts:
        if (args.a / rel).is_file() and (args.b / rel).is_file():
            a, b = per_image_psnr(args.a / rel), per_image_psnr(args.b / rel)
            m, lo, hi = paired_bootstrap(a, b)
            print(f"{name}: A − B {m:+.2f} dB [{lo:+.2f}, {hi:+.2f}] over {len(set(a) & set(b))} images")
            found += 1
    if not found:
        print(f"error: no per_image.csv that both {args.a} and {args.b} hold", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
