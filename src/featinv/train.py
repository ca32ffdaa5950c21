"""Deprecated alias of :mod:`featinv.training` (the training loop's module until featinv 0.1.0).

``featinv.train`` named both this module and the function that trains; the function stays
(``featinv.train(cfg, out)``), the module is :mod:`featinv.training`. Importing this one still
works for one more version, with a DeprecationWarning, and forwards every name.
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any

from . import training as _training

warnings.warn("the module featinv.train is deprecated: import from featinv.training (featinv.train(...), the "
              "function, stays)", DeprecationWarning, stacklevel=2)


class _DeprecatedModule(types.ModuleType):
    """Forwards names to :mod:`featinv.training`, and calls to its ``train`` (importing this module
    binds it to the package attribute ``featinv.train``, where the function was)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_training, name)

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _training.train(*args, **kwargs)


sys.modules[__name__].__class__ = _DeprecatedModule
