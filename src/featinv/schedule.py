"""Learning-rate schedules and the stopping rule: pure functions of counts and histories.

The training loop asks them; nothing here touches a model, a file or a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence


def cosine(progress: float) -> float:
    """Cosine decay from 1 at progress 0 to 0 at progress 1."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def plateaued(history: Sequence[float], window: int, min_gain: float) -> bool:
    """The stopping rule: True when the mean of the last ``window`` values (val PSNR per epoch)
    beats the mean of the ``window`` values before them by less than ``min_gain``. Needs
    ``2 * window`` values.

    Means, not bests: the best of many noisy epochs sits further above the curve than the best of
    a few, so a rule comparing bests fires while PSNR still rises whenever validation is noisy.
    A mean is as likely above the curve as below it, and one odd epoch moves it by 1/``window``.
    """
    if window < 1 or len(history) < 2 * window:
        return False
    return (sum(history[-window:]) - sum(history[-2 * window:-window])) / window < min_gain


def plateau_factor(step: int, warmup_steps: int, decay_start: Optional[int], decay_steps: int) -> float:
    """The plateau schedule: linear warm-up, then constant until ``decay_start`` (unknown until the
    rule fires), then a cosine to zero over ``decay_steps``."""
    warm = (step + 1) / warmup_steps if warmup_steps and step < warmup_steps else 1.0
    if decay_start is None or step < decay_start:
        return warm
    return min(warm, cosine((step - decay_start) / max(1, decay_steps)))


def lr_factor(total_steps: int, warmup_steps: int, schedule: str) -> Callable[..., float]:
    """Linear warm-up, then cosine decay to zero (or constant).

    ``f(step)`` decays over the steps after the warm-up; ``f(step, progress)`` (a time budget)
    decays over ``progress``, the elapsed fraction of the budget, capped by the warm-up ramp.
    """

    def f(step: int, progress: Optional[float] = None) -> float:
        warm = (step + 1) / warmup_steps if warmup_steps and step < warmup_steps else 1.0
        if schedule == "constant":
            return warm
        if progress is not None:
            return min(warm, cosine(progress))
        if warm < 1.0:
            return warm
        return cosine((step - warmup_steps) / max(1, total_steps - warmup_steps))

    return f


@dataclass(frozen=True)
class Decay:
    """The plateau schedule's decision after an epoch: decay over ``epochs`` epochs from now;
    ``converged``: the stopping rule (not a budget) asked for it."""

    epochs: int
    converged: bool


def decide_decay(
    psnr_history: Sequence[float], room_epochs: int, window: int, min_gain: float, decay_epochs: int,
    room_after_next: Optional[int] = None,
) -> Optional[Decay]:
    """Whether the plateau schedule starts its final decay now. ``room_epochs``: whole decay epochs
    the budgets (epoch cap, time) still allow; ``room_after_next``: the same after one more epoch at
    the constant rate (default ``room_epochs - 1``, the epoch cap's count). The budget starts the
    decay at the last epoch after which waiting would shorten it, so that less than one constant-
    rate epoch of the budget is left over. None: keep the constant rate."""
    if plateaued(psnr_history, window, min_gain):
        return Decay(max(1, min(decay_epochs, room_epochs)), True)
    wait = room_epochs - 1 if room_after_next is None else room_after_next
    if room_epochs > 0 and wait < min(decay_epochs, room_epochs):  # the budget ends soon, PSNR still rises: flagged
        return Decay(min(decay_epochs, room_epochs), False)
    return None


def room_left(epochs_done: int, epoch_cap: int, budget_s: Optional[float], spent_s: float,
              per_epoch_s: Optional[float], cost: float = 1.0) -> int:
    """Whole epochs that still fit under the epoch cap and the time budget, each costing ``cost``
    times ``per_epoch_s`` (an epoch's training-pass seconds, see :func:`epoch_cost`; the decay's
    epochs on larger crops cost more). ``per_epoch_s`` None: not known yet, only the cap counts."""
    left = epoch_cap - epochs_done
    if budget_s is None or per_epoch_s is None:
        return left
    return min(left, int((budget_s - spent_s) / max(cost * per_epoch_s, 1e-9)))


def epoch_cost(pass_s: Sequence[float], recent: int = 3) -> Optional[float]:
    """An epoch's training-pass seconds from ``pass_s``, this session's epochs of one kind (the
    same crop size), oldest first: the median of the last ``recent`` after the first. The first
    carries the start-up (loader workers, cuDNN's autotuning, compilation: 8× a steady epoch on a
    GPU), so it is never the estimate; with only it, None (not known yet)."""
    steady = list(pass_s[1:])[-recent:]
    return sorted(steady)[len(steady) // 2] if steady else None
