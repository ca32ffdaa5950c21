"""Small shared helpers: the user-error type, atomic writes, hashing, device choice."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

from ._version import __version__

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it, so that the CLI builds its parser (and
# answers --help or a mistyped flag) without importing torch.
log = logging.getLogger("featinv")


class FeatinvError(Exception):
    """An error the user can fix; the CLI prints its message as one line and exits with 2."""


def check_format(found: object, known: int, what: str, path: Union[str, Path]) -> int:
    """The format version of a file (1 where it has none, as featinv 0.1.0 wrote them); one
    sentence when it is newer than this featinv reads."""
    version = 1 if found is None else found
    if not isinstance(version, int) or isinstance(version, bool) or version > known:
        raise FeatinvError(
            f"{path} is {what} format {version}, written by a newer featinv; this is featinv {__version__}, "
            f"which reads formats up to {known}: upgrade featinv to use it."
        )
    return version


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Union[str, Path], write: Callable[[str], None]) -> None:
    """Run ``write(temporary_path)`` beside ``path``, then rename it over ``path``.

    Readers never see half a file, and a failure (a crash, a full disk) leaves the previous
    file intact. A full disk becomes a :class:`FeatinvError` that says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; outputs follow the umask
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FeatinvError(
                f"the disk is full: could not write {path} (the previous version, if any, is intact); "
                "free some space and run again (training resumes with --resume)."
            ) from None
        raise


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`_atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: object, path: Union[str, Path]) -> None:
    """``torch.save`` atomically, so a crash mid-write keeps the previous checkpoint."""
    import torch

    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU if there is one, else the CPU. Under torchrun (``LOCAL_RANK``
    set), ``auto`` and ``cuda`` mean this process's own GPU, ``cuda:LOCAL_RANK``."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local is not None and torch.cuda.is_available():
        name = f"cuda:{int(local)}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FeatinvError(f"--device {name} was asked for, but no CUDA GPU is visible; use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise FeatinvError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N.") from None


def in_notebook() -> bool:
    """Running inside a Jupyter kernel (not merely with ipykernel importable or imported)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(*args: object, **kwargs: object):
    """A tqdm bar: tqdm.auto's (widgets) in a notebook that has ipywidgets, the plain one elsewhere,
    so that a notebook without ipywidgets is not told "IProgress not found" (tqdm.auto warns on
    import there)."""
    if _notebook_with_widgets():
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(*args, **kwargs)


def progress_enabled() -> bool:
    """Progress bars on a terminal or in a notebook that can draw tqdm.auto's widgets (ipywidgets,
    which Colab has; without it tqdm warns "IProgress not found" on every bar); logs, pipes and CI
    stay clean."""
    return sys.stderr.isatty() or _notebook_with_widgets()


def _notebook_with_widgets() -> bool:
    import importlib.util

    return in_notebook() and importlib.util.find_spec("ipywidgets") is not None


@contextlib.contextmanager
def console_messages(verbose: Optional[bool]) -> Iterator[None]:
    """While a library call runs, show featinv's INFO messages on stderr when ``verbose`` (None:
    in a notebook) and logging does not already let them through; otherwise leave logging as the
    caller set it."""
    logger = logging.getLogger("featinv")
    # Someone asked for INFO (logging.basicConfig(level=INFO), the CLI): their handlers show it.
    if logger.getEffectiveLevel() <= logging.INFO or not (in_notebook() if verbose is None else verbose):
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware, not emulated."""
    import torch

    check = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(f() for f in check if f is not None)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → bf16 on GPUs that support it, fp16 on older GPUs; on the CPU, bf16 where the
    processor has native bf16 (2.5× the fp32 training throughput, measured by
    bench/throughput.py on a 2-core AVX512-BF16 CPU), else fp32."""
    import torch

    if name not in PRECISIONS:
        raise FeatinvError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}.")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise FeatinvError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32.")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _cpu_model() -> str:
    """The processor's vendor and family from /proc/cpuinfo ("Intel Xeon", "AMD EPYC"), or ``platform``'s word."""
    import platform
    import re

    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        name = re.search(r"^model name\s*:\s*(.+)$", text, re.M).group(1)
    except (OSError, AttributeError):
        return platform.processor() or platform.machine() or "CPU"
    name = re.sub(r"\((R|TM|tm|r)\)|\bProcessor\b|\bCPU\b|@.*$", " ", name)
    words = [w for w in name.split() if not any(c.isdigit() for c in w) and w.lower() not in ("core", "gold", "silver")]
    return " ".join(words[:2]) or "CPU"


def machine_class(device: Union[str, "torch.device"] = "cpu") -> str:
    """What a measurement ran on, in the words result tables use: "one NVIDIA H200" or
    "2-core AMD EPYC, AVX512-BF16" (the CPU's cores and its bf16 support, which decides speed)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev).replace(" 80GB HBM3", "").replace(" 80GB", "")
        return f"one {name}"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    isa = "AMX" if amx else "AVX512-BF16" if bf16 else "AVX2"
    return f"{usable_cpus()}-core {_cpu_model()}, {isa}"


def autocast(precision: str, device: torch.device):
    """Mixed precision for the forward passes; fp32 is a no-op context."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def usable_cpus() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers() -> int:
    return max(0, min(usable_cpus() - 1, 8))
