"""The documented layers hold: imports run one way, no cycles, short functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "featinv"
DOC = ROOT / "docs" / "architecture.md"
MAX_LINES = 80


def documented_layers(text: str) -> dict[str, int]:
    """``| 3 | `rundir` | ... |`` rows of docs/architecture.md → {module: layer}."""
    return {m: int(n) for n, m in re.findall(r"^\|\s*(\d+)\s*\|\s*`([\w_]+)`\s*\|", text, flags=re.M)}


def featinv_imports(path: Path) -> set[str]:
    """featinv modules ``path`` imports anywhere (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import figures
                found.update(a.name for a in node.names)
            elif node.module and node.module.split(".")[0] == "featinv":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("featinv."))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in SRC.glob("*.py")}
    return {p.stem: featinv_imports(p) & modules for p in SRC.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules, or [] (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return []


def layer_violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return [f"{m} (layer {layers[m]}) imports {d} (layer {layers[d]})"
            for m, deps in sorted(graph.items()) for d in sorted(deps) if layers[d] >= layers[m]]


def test_every_module_is_documented_with_a_layer():
    layers = documented_layers(DOC.read_text(encoding="utf-8"))
    assert {p.stem for p in SRC.glob("*.py")} == set(layers)


def test_imports_run_one_way_and_form_no_cycle():
    graph = import_graph()
    assert find_cycle(graph) == []
    assert layer_violations(graph, documented_layers(DOC.read_text(encoding="utf-8"))) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert layer_violations({"low": {"high"}, "high": set()}, {"low": 1, "high": 2}) == [
        "low (layer 1) imports high (layer 2)"
    ]
    assert layer_violations({"x": {"y"}, "y": set()}, {"x": 2, "y": 2})  # the same layer counts too


def test_a_function_level_import_is_seen(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from .cache import prepare\n    from . import figures\n")
    assert featinv_imports(p) == {"cache", "figures"}


@pytest.mark.parametrize("path", sorted(SRC.glob("*.py")), ids=lambda p: p.name)
def test_no_function_is_longer_than_80_lines(path):
    long = [f"{n.name}: {n.end_lineno - n.lineno + 1} lines"
            for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert long == []
