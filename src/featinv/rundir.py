"""The run directory's claim: one training process at a time.

``RUN/.lock`` holds the host, PID and start time of the process training into RUN. PIDs are
reused, so a lock counts as held only while a process with that PID *and* that start time runs
on the same host; a lock from another host cannot be checked from here and is reported with its
host and age, to be broken explicitly (``--break-lock``) when that run is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from .utils import FeatinvError

LOCK = ".lock"


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
