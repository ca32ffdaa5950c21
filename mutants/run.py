"""Plant each bug of mutants.yaml in turn, run the tests that must catch it, restore the tree.

    python mutants/run.py            # every mutant (make mutants)
    python mutants/run.py ID ...     # some of them
    python mutants/run.py --list

A mutant is an exact edit of one file (``find`` → ``replace``; ``find`` must occur exactly once,
so a list that no longer matches the code fails loudly instead of planting nothing) and the
pytest node ids that must fail with it. The tests are first run on the unchanged tree: a test
that fails there cannot catch anything. Caught means pytest ran and a test failed (exit 1); a
mutant that stops pytest from collecting (exit 2+) is reported as an error, not as caught.
Exit status: 0 when every mutant is caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LIST = Path(__file__).with_name("mutants.yaml")


def load(path: Path = LIST) -> list[dict]:
    """The mutants, each checked for its fields."""
    mutants = yaml.safe_load(path.read_text())
    for m in mutants:
        missing = {"id", "claim", "file", "find", "replace", "tests"} - set(m)
        if missing:
            raise SystemExit(f"mutant {m.get('id', '?')} lacks {', '.join(sorted(missing))}")
    return mutants


def check_applies(m: dict) -> str:
    """The file's text; raises when ``find`` does not occur exactly once."""
    text = (ROOT / m["file"]).read_text()
    count = text.count(m["find"])
    if count != 1:
        raise SystemExit(f"mutant {m['id']}: its find text occurs {count} times in {m['file']} (must be once)")
    return text


def pytest(tests: list[str]) -> int:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # never cache a mutant's bytecode
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "", "-p", "no:cacheprovider", *tests]
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def run_one(m: dict) -> str:
    path = ROOT / m["file"]
    original = check_applies(m)
    try:
        path.write_text(original.replace(m["find"], m["replace"]))
        code = pytest(m["tests"])
    finally:
        path.write_text(original)
    assert path.read_text() == original
    return {0: "NOT CAUGHT", 1: "caught"}.get(code, f"error (pytest exit {code})")


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ids", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)  # a killed run still restores the file it changed
    mutants = load()
    if args.ids:
        unknown = set(args.ids) - {m["id"] for m in mutants}
        if unknown:
            raise SystemExit(f"unknown mutant(s): {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m["id"] in args.ids]
    if args.list:
        for m in mutants:
            print(f"{m['id']:28s} {m['claim']}")
        return 0
    for m in mutants:
        check_applies(m)
    tests = list(dict.fromkeys(t for m in mutants for t in m["tests"]))
    print(f"baseline: {len(tests)} tests on the unchanged tree ...", flush=True)
    if pytest(tests) != 0:
        print("the tests fail on the unchanged tree; fix them first (python -m pytest -m '' " + " ".join(tests) + ")")
        return 1
    results = []
    for m in mutants:
        t0 = time.perf_counter()
        result = run_one(m)
        results.append(result)
        print(f"{result:12s} {m['id']:28s} {time.perf_counter() - t0:5.1f} s  {m['claim']}", flush=True)
    caught = results.count("caught")
    print(f"{caught} caught, {len(results) - caught} not caught, of {len(results)} mutants")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
