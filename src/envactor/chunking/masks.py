"""Prefix weights ``W`` for real-time chunking: the soft mask of Eq. 5 of the RTC paper (Black,
Galliker, Levine 2025, arXiv 2506.07339); docs/chunking.md, "The soft prefix mask".

Notation (docs/chunking.md): ``H`` actions per chunk, ``s`` execution horizon, ``d``
inference delay in control steps. ``W_i`` says how strongly action ``i`` of the new chunk is tied
to ``Y_i``, the unexecuted remainder of the previous chunk shifted to index 0:

    W_i = 1                              for i < d          (frozen: executed while inference runs)
    W_i = f(c_i)                         for d <= i < H - s (soft overlap)
    W_i = 0                              for i >= H - s     (free: the previous chunk has nothing)

with ``c_i = (H - s - i) / (H - s - d + 1)`` and ``f`` set by ``schedule``: ``"exp"`` is
``c (e^c - 1) / (e - 1)`` (the paper's best), ``"linear"`` is ``c``, ``"ones"`` is 1, ``"zeros"``
is 0 (a hard mask: only the frozen prefix is tied).

Out-of-range values are clamped, never an error: ``d`` and ``s`` above ``H`` become ``H``. When
``d > H - s`` (inference slower than the remainder of the chunk) the overlap is empty and the
frozen prefix wins over the zero tail: ``W_i = 1`` for every ``i < d``. Those ``d`` actions are
executed no matter what the new chunk says, so the new chunk must agree with them; the caller must
then fill ``Y`` beyond ``H - s`` with what the controller will really execute there (for instance
the last action held), not with zero padding.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch

Schedule = Literal["exp", "linear", "ones", "zeros"]
SCHEDULES: tuple[str, ...] = ("exp", "linear", "ones", "zeros")

__all__ = ["SCHEDULES", "Schedule", "prefix_weights", "prefix_weights_torch"]


def _as_count(name: str, value: object, minimum: int) -> int:
    """``value`` as a python int >= ``minimum``; bools, floats and strings are refused."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"prefix_weights: {name} must be an integer (int or numpy integer), "
            f"got {type(value).__name__} {value!r}"
        )
    count = int(value)
    if count < minimum:
        raise ValueError(f"prefix_weights: {name} must be >= {minimum}, got {count}")
    return count


def _validate(d: object, s: object, H: object, schedule: object) -> tuple[int, int, int, str]:
    H_ = _as_count("H (prediction horizon)", H, 1)
    d_ = _as_count("d (inference delay)", d, 0)
    s_ = _as_count("s (execution horizon)", s, 0)
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(
            f"prefix_weights: schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}"
        )
    return min(d_, H_), min(s_, H_), H_, schedule


@functools.lru_cache(maxsize=256)
def _weights_cached(d: int, s: int, H: int, schedule: str) -> np.ndarray:
    """The weights for already validated and clamped arguments (read-only float64 array)."""
    out = np.zeros(H, dtype=np.float64)
    end = H - s  # first index the previous chunk does not cover
    if d < end:
        i = np.arange(d, end, dtype=np.float64)
        c = (end - i) / (end - d + 1)
        if schedule == "exp":
            out[d:end] = c * np.expm1(c) / math.expm1(1.0)
        elif schedule == "linear":
            out[d:end] = c
        elif schedule == "ones":
            out[d:end] = 1.0
        # "zeros": the overlap stays 0 (hard mask)
    out[:d] = 1.0  # the frozen prefix wins, also when d > H - s
    out.flags.writeable = False
    return out


def prefix_weights(d: int, s: int, H: int, schedule: Schedule = "exp") -> np.ndarray:
    """Soft prefix mask ``W`` of shape ``(H,)``, dtype float32 (computed in float64).

    Args:
        d: inference delay in control steps (>= 0; clamped to ``H``).
        s: execution horizon (>= 0; clamped to ``H``).
        H: prediction horizon (>= 1).
        schedule: ``"exp"``, ``"linear"``, ``"ones"`` or ``"zeros"`` (see the module docstring).

    Returns:
        A new writable float32 array; ``W_i = 1`` for ``i < d``, 0 for ``i >= max(d, H - s)``.

    Raises:
        TypeError: ``d``, ``s`` or ``H`` is not an integer (bool and float are refused).
        ValueError: a negative ``d`` or ``s``, ``H < 1`` or an unknown schedule.
    """
    return _weights_cached(*_validate(d, s, H, schedule)).astype(np.float32)


def prefix_weights_torch(
    d: int,
    s: int,
    H: int,
    schedule: Schedule = "exp",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The torch twin of :func:`prefix_weights`: the same numbers as a ``(H,)`` tensor.

    Computed in float64 and cast once to ``dtype`` (so float32 equals the numpy result exactly).
    """
    values = _weights_cached(*_validate(d, s, H, schedule))
    return torch.tensor(values, dtype=dtype, device=device)
