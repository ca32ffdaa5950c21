"""The README stays true: its Python blocks run as written, each on its own, and every
`featinv …` line of its shell blocks parses with the real argument parser."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
PYTHON = [body for lang, body in BLOCKS if lang == "python"]


def _shell_commands() -> list[str]:
    lines = []
    for lang, body in BLOCKS:
        if lang not in ("bash", "sh"):
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.split("  #")[0].strip()
            if re.match(r"^(\.venv/bin/)?featinv\s", line):
                lines.append(line)
    return lines


def _is_synopsis(line: str) -> bool:
    """Usage lines (`[--flag VALUE]`, `a|b`, `...`) describe flags; they are not commands."""
    return "[--" in line or "|" in line or line.endswith("...") or " ... " in line


COMMANDS = [c for c in _shell_commands() if not _is_synopsis(c)]


def test_the_readme_has_commands_and_python_to_check():
    assert len(PYTHON) >= 4 and len(COMMANDS) >= 8


@pytest.mark.parametrize("line", COMMANDS, ids=lambda c: c[:60])
def test_every_featinv_command_line_parses(line):
    from featinv.cli import _parse

    argv = shlex.split(line)[1:]
    argv = [a.replace("$S", "samples") for a in argv]
    args = _parse(argv)  # exits with status 2 on an unknown or malformed flag
    assert args.command == argv[0]


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_blocks_run_as_written(index, tiny_run, tmp_path, monkeypatch):
    """Each block alone, in a folder holding the example run the README refers to."""
    (tmp_path / "runs").mkdir()
    shutil.copytree(tiny_run, tmp_path / "runs" / "example")
    monkeypatch.chdir(tmp_path)
    exec(compile(PYTHON[index], f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
