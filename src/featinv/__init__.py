"""featinv: reconstruct input images from the intermediate features of deep networks."""

from __future__ import annotations

import logging

from ._version import __version__

# A library only adds a NullHandler; the CLI (or the caller, or ``verbose=True``) decides where messages go.
logging.getLogger("featinv").addHandler(logging.NullHandler())

__all__ = ["__version__", "load_run", "evaluate_run", "train", "FeatureExtractor", "RunConfig"]


def __getattr__(name: str):
    # Lazy, so `import featinv` stays cheap.
    if name in ("load_run", "evaluate_run"):
        from . import evaluate

        return getattr(evaluate, name)
    if name == "train":  # the function (the module is featinv.training)
        from .training import train

        return train
    if name == "FeatureExtractor":
        from .backbones import FeatureExtractor

        return FeatureExtractor
    if name == "RunConfig":
        from .config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'featinv' has no attribute {name!r}")

