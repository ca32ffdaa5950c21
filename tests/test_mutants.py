"""The mutation list stays true to the code: each planted bug still applies to exactly one place
and names tests that exist (make mutants plants them; this only checks the list)."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("mutants_run", ROOT / "mutants" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_mutant_applies_once_and_names_existing_tests():
    run = _runner()
    mutants = run.load()
    assert len({m["id"] for m in mutants}) == len(mutants)
    for m in mutants:
        run.check_applies(m)  # raises unless find occurs exactly once
        assert m["find"] != m["replace"], m["id"]
        for node in m["tests"]:
            path, _, name = node.partition("::")
            assert (ROOT / path).is_file(), (m["id"], node)
            if name:
                assert re.search(rf"^def {re.escape(name.split('[')[0])}\(", (ROOT / path).read_text(), re.M), (m["id"], node)
