"""The README and the documentation stay true: Python blocks run as written, every `featinv …` line
parses with the real argument parser, result tables equal what their committed files give, and the
pages describe the software as it is (no dated story of how the work went)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)

# Blocks that cannot run here, by page and first line, each with the reason.
CANNOT_RUN = {
    ("docs/development.md", "# in featinv/backbones.py, _registry():"): "a line to paste into the registry, not a script",
}


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _blocks(lang: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for found, body in FENCE.findall(page.read_text(encoding="utf-8")):
            if found in lang:
                out.append((_rel(page), body))
    return out


PYTHON = [(page, body) for page, body in _blocks(("python",))
          if (page, body.strip().splitlines()[0]) not in CANNOT_RUN]


def _is_synopsis(line: str) -> bool:
    """Usage lines (`[--flag VALUE]`, `a|b`, `...`) describe flags; they are not commands."""
    return "[--" in line or "|" in line or line.endswith("...") or " ... " in line


def _featinv_lines() -> list[tuple[str, str]]:
    """(page, argv after `featinv`) for every command of a shell block, torchrun's `-m featinv` included."""
    lines = []
    for page, body in _blocks(("bash", "sh")):
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.split("  #")[0].strip()
            m = re.match(r"^(?:\.venv/bin/|bin/)?featinv\s+(.*)$", line) or re.search(r"\btorchrun\b.*?-m featinv\s+(.*)$", line)
            if m and not _is_synopsis(line):
                lines.append((page, m.group(1)))
    return lines


COMMANDS = _featinv_lines()


def test_the_pages_have_commands_and_python_to_check():
    pages_with_python = {p for p, _ in PYTHON}
    assert len(PYTHON) >= 6 and "README.md" in pages_with_python and "docs/guide/python.md" in pages_with_python
    assert len(COMMANDS) >= 20 and any(p == "README.md" for p, _ in COMMANDS)
    assert any("torchrun" in body for _, body in _blocks(("bash",)))  # cluster launchers: parsed, not run


@pytest.mark.parametrize("page, line", COMMANDS, ids=lambda v: v[:60])
def test_every_featinv_command_line_parses(page, line):
    from featinv.cli import _parse

    argv = [a.replace("$S", "samples").replace("$D", "decoder") for a in shlex.split(line)]
    args = _parse(argv)  # exits with status 2 on an unknown or malformed flag
    assert args.command == argv[0]


@pytest.mark.parametrize("page, block", PYTHON, ids=lambda v: v[:40])
def test_python_blocks_run_as_written(page, block, tiny_run, tmp_path, monkeypatch):
    """Each block alone, in a folder holding the example run the pages refer to (runs/example) and
    the prior's weights where a user keeps them (taesd/, from ../shared/priors)."""
    (tmp_path / "runs").mkdir()
    shutil.copytree(tiny_run, tmp_path / "runs" / "example")
    prior = ROOT.parent / "shared" / "priors" / "taesd"
    if '"taesd"' in block and not prior.is_dir():
        pytest.skip("../shared/priors/taesd is absent")
    if prior.is_dir():
        (tmp_path / "taesd").symlink_to(prior)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"{page} python block", "exec"), {"__name__": "__docs__"})


def test_bench_scripts_named_in_the_pages_exist():
    named = set()
    for _, body in _blocks(("bash", "sh")):
        named |= set(re.findall(r"\bbench/[\w/]+\.(?:py|sh)\b", body))
    assert named, "the pages name no bench script"
    assert not [n for n in sorted(named) if not (ROOT / n).is_file()]


# --- the README ------------------------------------------------------------------------------------

def test_the_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250 and len(text.encode()) <= 16 * 1024
    first_screen = "\n".join(text.splitlines()[:40])
    assert "make demo" in first_screen and "make test" in first_screen  # install
    assert "featinv train" in first_screen  # run
    assert "docs/figures/depths.png" in first_screen


# --- generated tables ------------------------------------------------------------------------------

def _tables_module():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "bench" / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_generated_table_equals_what_its_result_files_give():
    tables = _tables_module()
    assert tables.stale() == []  # fix: python bench/tables.py
    used = {name for page in PAGES for name in tables.BLOCK.findall(page.read_text(encoding="utf-8")) for name in [name[1]]}
    assert used == set(tables.TABLES)  # every table is on a page, every block names a table
    assert "headline" in tables.BLOCK.findall(README.read_text(encoding="utf-8"))[0][1]


def _copy_pages(dst: Path) -> None:
    shutil.copy(README, dst / "README.md")
    shutil.copytree(ROOT / "docs", dst / "docs")


def test_a_number_edited_by_hand_in_a_table_is_caught(tmp_path):
    """Edit one number of the README's generated table in a copy: the check names that table."""
    tables = _tables_module()
    _copy_pages(tmp_path)
    readme = tmp_path / "README.md"
    text = readme.read_text(encoding="utf-8")
    block = tables.BLOCK.search(text)
    number = re.search(r"\| (\d+\.\d\d) \|", block.group(3))
    edited = block.group(3).replace(number.group(0), f"| {float(number.group(1)) + 0.01:.2f} |", 1)
    readme.write_text(text.replace(block.group(3), edited), encoding="utf-8")
    assert tables.stale(docs_root=tmp_path) == ["README.md: headline"]


def test_a_table_follows_its_result_file(tmp_path):
    """Change a score in a copy of the result files: the rendered table shows the new score."""
    import json

    tables = _tables_module()
    data = tmp_path / "data"
    shutil.copytree(ROOT / "bench" / "results", data / "bench" / "results")
    for d in (ROOT / tables.DECODERS).iterdir():
        if (d / "summary.json").is_file():
            (data / tables.DECODERS / d.name).mkdir(parents=True)
            shutil.copy(d / "summary.json", data / tables.DECODERS / d.name)
    first = sorted((data / tables.DECODERS).iterdir())[0] / "summary.json"
    s = json.loads(first.read_text())
    before = tables.table_headline(data)
    assert f"| {s['val']['psnr']:.2f} |" in before
    s["val"]["psnr"] = 12.34
    first.write_text(json.dumps(s))
    assert "| 12.34 |" in tables.table_headline(data) and before != tables.table_headline(data)
    assert tables.stale(docs_root=ROOT, data_root=data) == [
        "README.md: headline", "docs/index.md: headline", "docs/results.md: shipped"]


# --- the documentation describes the software as it is ---------------------------------------------

DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
STORY = re.compile(r"\b(session|sessions|until 20\d\d|since 20\d\d|before 20\d\d|this project's machine|"
                   r"was lent|were lent|lab notebook)\b", re.I)


def _outside_tables(text: str) -> str:
    return _tables_module().BLOCK.sub("", text)


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "changelog.md"], ids=_rel)
def test_pages_carry_dates_only_in_generated_tables(page):
    text = _outside_tables(page.read_text(encoding="utf-8"))
    assert not DATE.findall(text), "a date belongs in a table's date column or in CHANGELOG.md"
    assert not STORY.findall(text), "how the work went belongs in git and CHANGELOG.md"


def test_help_texts_and_docstrings_tell_no_story():
    import ast

    from featinv.cli import SUBPARSERS, build_parser

    build_parser()
    helps = "\n".join(p.format_help() for p in SUBPARSERS.values())
    assert not DATE.findall(helps) and not STORY.findall(helps)
    for f in sorted((ROOT / "src" / "featinv").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                assert not DATE.findall(doc), f"{f.name}: {doc[:80]}"


def test_the_notebook_points_into_the_documentation():
    import json

    nb = json.loads((ROOT / "notebooks" / "featinv.ipynb").read_text(encoding="utf-8"))
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    links = re.findall(r"\]\(([^)]+)\)", text)
    docs = [link for link in links if "docs/" in link]
    assert docs and "README" not in text
    for link in docs:
        path = link.split("docs/", 1)[1].split("#")[0]
        assert (ROOT / "docs" / path).is_file(), link
