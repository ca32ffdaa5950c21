"""The run directory: its layout, the reading and writing of every file in it, and its lock.

Every other module asks :class:`RunDir` for a path or a file rather than spelling ``RUN/...``
itself. Files that carry a format version (config.yaml, decoder.json, checkpoints) are read
through the functions here, which accept every version this featinv knows and refuse a newer one
in one sentence naming it.

``RUN/.lock`` holds the host, PID and start time of the process training into RUN. PIDs are
reused, so a lock counts as held only while a process with that PID *and* that start time runs
on the same host; a lock from another host cannot be checked from here and is reported with its
host and age, to be broken explicitly (``--break-lock``) when that run is known to be gone.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from .config import RunConfig, load_config, save_config
from .utils import FeatinvError, atomic_torch_save, atomic_write_bytes, atomic_write_text, check_format

log = logging.getLogger("featinv")

LOCK = ".lock"
# Format versions of the files a run directory holds. 1: featinv 0.1.0, which wrote no version.
CHECKPOINT_FORMAT = 2  # 2: adds "format"; the keys of 1 kept, so a 0.1.0 checkpoint loads as is
DECODER_FORMAT = 2  # 2: adds "format"


def process_start(pid: int) -> Optional[str]:
    """The process's start time as the kernel counts it (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command name in parentheses


def process_alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    now = process_start(pid)
    return start is None or now is None or now == start


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


class RunLock:
    """``with RunLock(run_dir):`` — refuse at once, in one sentence, when another live process
    holds ``run_dir``; take over a lock whose process is gone (same host)."""

    def __init__(self, run_dir: Path, break_lock: bool = False) -> None:
        self.run_dir, self.break_lock = Path(run_dir), break_lock
        self.path = self.run_dir / LOCK
        self.created_dir = False

    def _me(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "start": process_start(pid), "time": time.time()}

    def _holder(self) -> Optional[dict[str, Any]]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # vanished, or half-written by a process that died: free

    def __enter__(self) -> "RunLock":
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise FeatinvError(f"--out {self.run_dir} is a file, not a folder; choose another --out.")
        if not self.run_dir.exists():
            self.run_dir.mkdir(parents=True)
            self.created_dir = True
        me = self._me()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_holder(me)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            return self
        raise FeatinvError(f"could not claim {self.path}: other processes keep taking it.")

    def _check_holder(self, me: dict[str, Any]) -> None:
        """Raise if the lock is held; remove it if it is stale (or broken on request)."""
        other = self._holder()
        if other is not None:
            age = _age(time.time() - float(other.get("time", time.time())))
            if other.get("host") == me["host"]:
                if other.get("pid") != me["pid"] and process_alive(int(other.get("pid", -1)), other.get("start")):
                    raise FeatinvError(
                        f"{self.run_dir} is being trained by another featinv process (PID {other['pid']}, started "
                        f"{age} ago); wait for it to finish or stop it first."
                    )
            elif not self.break_lock:
                raise FeatinvError(
                    f"{self.run_dir} is locked by a featinv process on host {other.get('host')} (PID {other.get('pid')}, "
                    f"{age} ago); if that run is gone, pass --break-lock."
                )
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __exit__(self, *exc: Any) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        if self.created_dir and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()  # refused before anything was written: leave no empty folder


class RunDir:
    """One run directory: ``config.yaml``, ``metrics.csv``, ``summary.json``, ``commands.txt``,
    ``checkpoints/{last,previous,best}.pt``, ``decoder.{json,safetensors}``, ``semantic.json``,
    ``results/`` (per_image.csv, pairs, best_worst.png), ``figures/``, ``skipped.csv``,
    ``feature_cache/`` and ``.lock``; ``feature_error.json`` when a sweep compared the decoder with
    inversions. An inversion's folder (`featinv invert`) is read here too: ``metrics.json`` naming
    its method, ``per_image.csv`` and ``results/``."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ── paths ──
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def results(self) -> Path:
        return self.path / "results"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def per_image_path(self) -> Path:
        return self.results / "per_image.csv"

    @property
    def semantic_path(self) -> Path:
        return self.path / "semantic.json"

    @property
    def skipped_path(self) -> Path:
        return self.path / "skipped.csv"

    @property
    def feature_cache(self) -> Path:
        return self.path / "feature_cache"

    def lock(self, break_lock: bool = False) -> RunLock:
        return RunLock(self.path, break_lock)

    # ── config and commands ──
    def has_config(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> RunConfig:
        if not self.has_config():
            raise FeatinvError(f"{self.path} is not a featinv run directory (no config.yaml).")
        return load_config(self.config_path)

    def write_config(self, cfg: RunConfig) -> None:
        save_config(cfg, self.config_path)

    def record_command(self, command: Optional[str]) -> None:
        """Append the invoking command line to ``commands.txt`` (one line per session)."""
        if not command:
            return
        path = self.path / "commands.txt"
        before = path.read_text(encoding="utf-8") if path.is_file() else ""
        atomic_write_text(path, before + command + "\n")

    # ── metrics.csv ──
    def read_metrics(self) -> list[dict[str, str]]:
        return read_csv(self.metrics_path) if self.metrics_path.is_file() else []

    def write_metrics(self, rows: Sequence[dict[str, Any]], fields: list[str]) -> None:
        write_csv(self.metrics_path, rows, fields)

    # ── summary.json ──
    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text(encoding="utf-8")) if self.summary_path.is_file() else {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")

    def completed(self) -> bool:
        return self.summary_path.is_file() and self.read_summary().get("status") == "completed"

    def record_failure(self, message: str) -> None:
        """Mark the run failed in ``summary.json`` (checkpoints stay as they were)."""
        self.write_summary({"status": "failed", "error": message})

    # ── checkpoints ──
    def has_checkpoint(self) -> bool:
        return any((self.checkpoints / name).is_file() for name in ("last.pt", "previous.pt"))

    def save_last(self, state: dict) -> None:
        """Write ``last.pt``, keeping the one before it as ``previous.pt``: a damaged last.pt then
        costs one checkpoint's worth of steps, not the run."""
        last = self.checkpoints / "last.pt"
        if last.is_file():
            os.replace(last, self.checkpoints / "previous.pt")
        atomic_torch_save(state, last)

    def save_best(self, state: dict) -> None:
        atomic_torch_save(state, self.checkpoints / "best.pt")

    def load_best(self) -> dict:
        return self._load(self.checkpoints / "best.pt")

    def load_checkpoint(self) -> dict:
        """``last.pt``, or ``previous.pt`` (saying so) when last.pt is missing or cannot be read.
        Loaded with weights_only=True: a checkpoint file can never run code."""
        errors = []
        for name in ("last.pt", "previous.pt"):
            path = self.checkpoints / name
            if not path.is_file():
                errors.append(f"{path} is missing")
                continue
            try:
                ckpt = self._load(path)
            except FeatinvError:
                raise
            except Exception as e:  # noqa: BLE001 - unpickling refusals and corrupt files alike
                errors.append(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                continue
            if errors:
                log.warning("%s; resuming from %s, the checkpoint before it", errors[0], path)
            return ckpt
        raise FeatinvError(
            "--resume: no checkpoint could be loaded as a plain checkpoint (loaded with weights_only=True, "
            f"which never runs code from the file): {'; '.join(errors)}."
        )

    @staticmethod
    def _load(path: Path) -> dict:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        check_format(ckpt.get("format") if isinstance(ckpt, dict) else None, CHECKPOINT_FORMAT, "a checkpoint of", path)
        return ckpt

    def mean_image(self) -> torch.Tensor:
        """The mean training image (3×S×S, [0,1]) this run's references used, from its last checkpoint."""
        ckpt = self.load_checkpoint()
        return (ckpt["mean_sum"] / max(1, ckpt["mean_n"])).float()

    # ── the exported decoder ──
    def has_decoder(self) -> bool:
        return (self.path / "decoder.json").is_file() and (self.path / "decoder.safetensors").is_file()

    def write_decoder(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """``decoder.safetensors`` (weights) + ``decoder.json`` (everything needed to rebuild it)."""
        from safetensors.torch import save

        atomic_write_bytes(self.path / "decoder.safetensors", save(tensors))
        atomic_write_text(self.path / "decoder.json", json.dumps({"format": DECODER_FORMAT, **meta}, indent=2) + "\n")

    def read_decoder(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``decoder.json`` and the tensors of ``decoder.safetensors``."""
        from safetensors.torch import load_file

        if not self.has_decoder():
            raise FeatinvError(
                f"{self.path} has no exported decoder (decoder.json + decoder.safetensors); "
                "is it a finished featinv run directory?"
            )
        meta = json.loads((self.path / "decoder.json").read_text(encoding="utf-8"))
        check_format(meta.get("format"), DECODER_FORMAT, "a decoder.json of", self.path / "decoder.json")
        return meta, load_file(str(self.path / "decoder.safetensors"))

    # ── results ──
    def read_per_image(self) -> list[dict[str, str]]:
        """Per-image scores: a run's results/per_image.csv, or an inversion's per_image.csv."""
        if not self.per_image_path.is_file() and self.read_inversion() is not None:
            return read_csv(self.path / "per_image.csv")
        return read_csv(self.per_image_path)

    def read_semantics(self) -> Optional[dict[str, Any]]:
        return _read_json(self.semantic_path)

    def write_semantics(self, result: dict[str, Any]) -> None:
        atomic_write_text(self.semantic_path, json.dumps(result, indent=2) + "\n")

    def read_feature_error(self) -> Optional[dict[str, Any]]:
        return _read_json(self.path / "feature_error.json")

    def write_feature_error(self, result: dict[str, Any]) -> None:
        atomic_write_text(self.path / "feature_error.json", json.dumps(result, indent=2) + "\n")

    # ── an inversion's folder ──
    def read_inversion(self) -> Optional[dict[str, Any]]:
        """The metrics.json of an optimisation-based inversion (it names its method); None otherwise."""
        m = _read_json(self.path / "metrics.json")
        return m if m is not None and "method" in m else None


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    """An optional JSON file: its content, or None when it is not there."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
