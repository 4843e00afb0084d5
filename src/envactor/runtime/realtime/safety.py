"""Action safety for the real-time controller: bounds, slew-rate limit, the safe action."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import gymnasium as gym
import numpy as np

SafeAction = Literal["hold", "zeros"] | np.ndarray


class ActionFilter:
    """Every action the controller writes goes through here.

    The step change is limited to ``max_delta`` per control step (``|a_t - a_{t-1}| <=
    max_delta`` elementwise, when set), then the action is clipped to the robot's bounds (the
    bounds always win).

    Args:
        space: the robot's action space (its ``low``/``high`` are the bounds).
        max_delta: slew-rate limit per step (scalar or per action dim), or None.
    """

    def __init__(self, space: gym.spaces.Box, max_delta: float | np.ndarray | None = None) -> None:
        self.shape = tuple(space.shape or ())
        self.low = np.broadcast_to(np.asarray(space.low, np.float64), self.shape)
        self.high = np.broadcast_to(np.asarray(space.high, np.float64), self.shape)
        self.dtype = space.dtype
        self.max_delta: np.ndarray | None = None
        if max_delta is not None:
            md = np.broadcast_to(np.asarray(max_delta, np.float64), self.shape)
            if not np.all(md > 0):
                raise ValueError(f"max_delta must be > 0 in every dim, got {max_delta!r}")
            self.max_delta = md

    def __call__(
        self, action: np.ndarray, prev: np.ndarray | None
    ) -> tuple[np.ndarray, bool, bool]:
        """``(safe action, was clipped, was slew-limited)``."""
        a = np.asarray(action, np.float64).reshape(self.shape)
        limited = False
        if self.max_delta is not None and prev is not None:
            p = np.asarray(prev, np.float64).reshape(self.shape)
            step = np.clip(a - p, -self.max_delta, self.max_delta)
            limited = bool(np.any(step != a - p))
            a = p + step
        out = np.clip(a, self.low, self.high)
        clipped = bool(np.any(out != a))
        return out.astype(self.dtype), clipped, limited


def resolve_safe_action(
    safe: SafeAction, last: np.ndarray | None, shape: tuple[int, ...]
) -> np.ndarray:
    """The action written on a safe stop: ``"hold"`` (the last written, zeros if none),
    ``"zeros"``, or a fixed array of the action shape."""
    if isinstance(safe, str):
        if safe == "hold" and last is not None:
            return np.array(last, copy=True)
        if safe in ("hold", "zeros"):
            return np.zeros(shape, np.float32)
        raise ValueError(f"safe_action must be 'hold', 'zeros' or an array, got {safe!r}")
    arr = np.asarray(safe, np.float32)
    if arr.shape != shape:
        raise ValueError(f"safe_action: expected shape {shape}, got {arr.shape}")
    return arr


def limits_from_stats(
    stats: Mapping[str, Any], margin: float = 0.1
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Action bounds from a policy's raw action stats: ``[min, max]`` widened by ``margin``
    times the range on each side (``q01``/``q99`` when there is no min/max); ``(low, high,
    which stats)``, or None when the stats hold neither pair.

    A dim whose range is 0 (constant in the data) may only take that value.
    """
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    for lo, hi in (("min", "max"), ("q01", "q99")):
        if lo in stats and hi in stats:
            low = np.asarray(stats[lo], np.float64).reshape(-1)
            high = np.asarray(stats[hi], np.float64).reshape(-1)
            span = high - low
            return low - margin * span, high + margin * span, f"{lo}/{hi}"
    return None


def auto_max_delta(low: np.ndarray, high: np.ndarray, fraction: float = 0.1) -> np.ndarray | None:
    """The default slew limit on a robot: ``fraction`` of each dim's range per control step
    (None when a dim's range is 0 or not finite: no automatic limit then)."""
    span = np.asarray(high, np.float64) - np.asarray(low, np.float64)
    if not np.all(np.isfinite(span)) or not np.all(span > 0):
        return None
    return fraction * span
