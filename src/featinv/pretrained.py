"""Decoders that ship with the package: one per stage of EfficientNet-Lite0 (ImageNet weights),
trained on 2,437 photos (the imagenet-sample split's 900 training photos and 1,537 more) by
``bench/quality.py --extra-data`` and copied in by ``bench/ship_decoders.py``. Each is a minimal run directory, so ``load_run`` reads
it. Trained on ImageNet photos: for research and education (ImageNet's terms of use).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .utils import FeatinvError


def shipped_dir() -> Path:
    return Path(str(resources.files("featinv") / "assets" / "decoders"))


def shipped_decoders() -> dict[str, Path]:
    """``{"stage1": run_dir, ...}`` for the bundled EfficientNet-Lite0 decoders, finest first."""
    root = shipped_dir()
    found = {d.name.rsplit("-", 1)[1]: d for d in sorted(root.glob("efficientnet_lite0-stage*")) if (d / "decoder.json").is_file()}
    if not found:
        raise FeatinvError(f"no shipped decoders in {root}; this installation of featinv lacks its assets.")
    return found


def run_or_shipped(name: str) -> Path:
    """A run directory, or one of the shipped decoders by name (``stage1``, or
    ``efficientnet_lite0-stage1``): what ``featinv reconstruct`` and ``evaluate`` take as RUN."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    shipped = shipped_decoders()
    key = name.rsplit("-", 1)[-1] if name.startswith("efficientnet_lite0-") else name
    if key in shipped:
        return shipped[key]
    raise FeatinvError(f"{name} is neither a run directory nor a shipped decoder ({', '.join(shipped)}).")
