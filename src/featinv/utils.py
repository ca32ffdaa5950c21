"""Small shared helpers: the user-error type, atomic writes, hashing, device choice."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Union

import torch

log = logging.getLogger("featinv")


class FeatinvError(Exception):
    """An error the user can fix; the CLI prints its message as one line and exits with 2."""


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: object, path: Union[str, Path]) -> None:
    """``torch.save`` through a temporary file, so a crash mid-write keeps the previous file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FeatinvError(f"--device {name} was asked for, but no CUDA GPU is visible; use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise FeatinvError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N.") from None


def progress_enabled() -> bool:
    """Progress bars only on a terminal: logs and CI stay clean."""
    return sys.stderr.isatty()
