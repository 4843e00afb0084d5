"""One streaming pass over data -> normalization stats (``StatsAccumulator``, ``compute_stats``).

Mean/variance by a Chan/Welford merge in float64, exact min/max, and q01/q99 from a per-element
sketch of weighted data values (``_Sketch``), so a dataset larger than memory works. The
quantiles depend on ranks only: one extreme value moves them by at most one rank, never out of
the data's range. Every value must be finite and within float32 range (``envactor.values``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np
import torch

from envactor.normalize import MODES, Normalizer, NormalizerError, NormMode
from envactor.values import dim_label, first_bad_value

__all__ = ["StatsAccumulator", "compute_stats"]

# the sketch's levels hold at most this many float64 values each (8 MiB), whatever the shape
_LEVEL_BUDGET = 1 << 20
# warn when the middle 98% of a key's values spans less than this part of its normalized range
_COLLAPSE = 1e-3


class _Sketch:
    """Weighted data values of every element, in levels; quantiles with a tracked rank error.

    Level ``h`` holds rows of weight ``2**h``. Rows arrive at level 0. A level holding
    ``capacity`` rows or more is sorted per element and every other sorted value (even and odd
    positions in turn) moves up one level with twice the weight; an odd one out stays. That step
    changes the weighted count of values ``<= t`` by at most ``2**h`` for every ``t``, and
    ``error`` sums those bounds, so the estimated j-th smallest value lies between the exact
    ``(j - error)``-th and ``(j + error)``-th. Each step at level ``h`` consumes at least
    ``capacity * 2**h`` frames, hence ``error <= levels * count / capacity``; before the first
    step (fewer than ``capacity`` frames) every value is kept and quantiles are exact. Estimates
    are data values (or interpolations between two), so they stay within ``[min, max]``.
    """

    def __init__(self, width: int, capacity: int) -> None:
        self.width = width
        self.capacity = capacity
        self.levels: list[list[np.ndarray]] = []
        self.sizes: list[int] = []
        self.odd: list[bool] = []
        self.error = 0

    def add(self, flat: np.ndarray) -> None:
        """Add rows shaped ``(N, width)`` (copied: the caller may reuse its buffer)."""
        rows, h = np.array(flat, dtype=np.float64), 0
        while len(rows):
            if h == len(self.levels):
                self.levels.append([])
                self.sizes.append(0)
                self.odd.append(False)
            self.levels[h].append(rows)
            self.sizes[h] += len(rows)
            if self.sizes[h] < self.capacity:
                return
            ordered = np.sort(np.concatenate(self.levels[h]), axis=0)
            even = len(ordered) - len(ordered) % 2
            rest = ordered[even:]
            self.levels[h] = [rest] if len(rest) else []
            self.sizes[h] = len(rest)
            rows = ordered[int(self.odd[h]) : even : 2]
            self.odd[h] = not self.odd[h]
            self.error += 1 << h
            h += 1

    def quantiles(self, qs: Iterable[float], total: int) -> list[np.ndarray]:
        """Linear-interpolated quantiles like ``np.quantile(..., axis=0)``, per element."""
        parts = [(a, 1 << h) for h, level in enumerate(self.levels) for a in level]
        values = np.concatenate([a for a, _ in parts])
        weights = np.concatenate([np.full(len(a), w, dtype=np.int64) for a, w in parts])
        order = np.argsort(values, axis=0, kind="stable")
        ordered = np.take_along_axis(values, order, axis=0)
        cum = np.cumsum(weights[order], axis=0)
        cols = np.arange(self.width)

        def kth(j: int) -> np.ndarray:
            return cast(np.ndarray, ordered[np.argmax(cum > j, axis=0), cols])

        out = []
        for q in qs:
            pos = q * (total - 1)
            j0 = math.floor(pos)
            t = pos - j0
            a, b = kth(j0), kth(min(j0 + 1, total - 1))
            out.append(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))
        return out


class _Running:
    """Count, mean, M2 (Chan/Welford merge, float64), min, max (with where they were seen)
    and an optional quantile sketch, for one key."""

    def __init__(self, key: str, with_quantiles: bool, sketch_size: int) -> None:
        self.key, self.with_quantiles, self.sketch_size = key, with_quantiles, sketch_size
        self.count = 0
        self.shape: tuple[int, ...] | None = None
        self.mean = self.m2 = self.min = self.max = np.zeros(())
        self.min_at = self.max_at = np.zeros((), dtype=object)
        self.sketch: _Sketch | None = None

    def update(self, x: np.ndarray, where: str) -> None:
        if x.ndim < 1 or x.shape[0] == 0:
            raise NormalizerError(
                f"{where}: key {self.key!r}: expected shape (N, ...) with N > 0, found {x.shape}"
            )
        if self.shape is not None and x.shape[1:] != self.shape:
            raise NormalizerError(
                f"{where}: key {self.key!r}: expected feature shape {self.shape}, "
                f"found {x.shape[1:]}"
            )
        bad = first_bad_value(x)
        if bad is not None:
            raise NormalizerError(
                f"{where}, frame {bad.row}: key {self.key!r}{bad.dim}: {bad.expected()}"
            )
        x = x.astype(np.float64, copy=False)
        flat = x.reshape(x.shape[0], -1)
        nb = x.shape[0]
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        lo_row, hi_row = flat.argmin(axis=0), flat.argmax(axis=0)
        cols = np.arange(flat.shape[1])
        lo, hi = flat[lo_row, cols], flat[hi_row, cols]
        new_lo = new_hi = cols  # on the first batch every element's min and max are new
        if self.shape is None:
            self.shape = x.shape[1:]
            self.mean, self.m2 = mb, m2b
            self.min, self.max = lo, hi
            self.min_at = np.full(lo.shape, "", dtype=object)
            self.max_at = np.full(hi.shape, "", dtype=object)
            if self.with_quantiles:
                width = flat.shape[1]
                capacity = max(64, min(self.sketch_size, _LEVEL_BUDGET // max(width, 1)))
                self.sketch = _Sketch(width, capacity + capacity % 2)
        else:
            na, n = self.count, self.count + nb
            delta = mb - self.mean
            self.mean = self.mean + delta * (nb / n)
            self.m2 = self.m2 + m2b + delta**2 * (na * nb / n)
            new_lo, new_hi = np.flatnonzero(lo < self.min), np.flatnonzero(hi > self.max)
            self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)
        if self.sketch is not None:  # not for images: no quantiles, no outlier notes
            for i in new_lo:
                self.min_at[i] = f"{where}, frame {lo_row[i]}"
            for i in new_hi:
                self.max_at[i] = f"{where}, frame {hi_row[i]}"
            self.sketch.add(flat)
        self.count += nb

    def result(self) -> dict[str, np.ndarray]:
        assert self.shape is not None
        out = {
            "mean": np.asarray(self.mean),
            "std": np.sqrt(self.m2 / self.count),
            "min": self.min.reshape(self.shape),
            "max": self.max.reshape(self.shape),
        }
        if self.sketch is not None:
            q01, q99 = self.sketch.quantiles((0.01, 0.99), self.count)
            out["q01"] = np.clip(q01, self.min, self.max).reshape(self.shape)
            out["q99"] = np.clip(q99, self.min, self.max).reshape(self.shape)
        return out

    def collapsed(self, mode: str, stats: Mapping[str, np.ndarray]) -> list[str]:
        """Why ``mode`` would squeeze the bulk of an element to a near constant, per element."""
        if mode not in ("mean_std", "min_max") or "q01" not in stats:
            return []
        spread = (stats["q99"] - stats["q01"]).ravel()
        mean = stats["mean"].ravel()
        scale = stats["std"].ravel() if mode == "mean_std" else (self.max - self.min) / 2
        notes = []
        for i in np.flatnonzero((spread > 0) & (spread < _COLLAPSE * scale)):
            high = self.max[i] - mean[i] >= mean[i] - self.min[i]
            value, at = (self.max[i], self.max_at[i]) if high else (self.min[i], self.min_at[i])
            index = tuple(int(v) for v in np.unravel_index(i, self.shape)) if self.shape else ()
            dim = dim_label(index)
            notes.append(
                f"key {self.key!r}{dim}: the middle 98% of its values (q01 "
                f"{stats['q01'].ravel()[i]:.4g} .. q99 {stats['q99'].ravel()[i]:.4g}) spans "
                f"{spread[i] / scale[i]:.2g} of the scale of mode {mode!r} because of the value "
                f"{value:.4g} at {at}; this input will be nearly constant after normalization. "
                "Remove the outlier from the data or use mode 'quantile'"
            )
        return notes


class StatsAccumulator:
    """One pass over a dataset of any size: mean/std/min/max exactly, q01/q99 from a sketch.

    Quantiles are exact while a key has seen fewer than ``sketch_size`` frames (fewer for
    features of over 128 elements, to bound memory); beyond, the estimate's rank is within
    ``rank_error(key)`` frames of ``np.quantile``'s (at most about ``log2(count / sketch_size)
    + 1`` times ``count / sketch_size``), and it is always a value between two data values, so
    one outlier cannot move q01/q99 out of the data's range. Every value must be finite and
    within float32 range. Keys in mode ``image`` skip quantiles. Batch keys with no mode are
    ignored. ``finalize`` warns (RuntimeWarning) when an outlier would make a ``mean_std`` or
    ``min_max`` input nearly constant.
    """

    def __init__(
        self, modes: Mapping[str, NormMode], *, sketch_size: int = 8192, eps: float = 1e-8
    ) -> None:
        for key, mode in modes.items():
            if mode not in MODES:
                raise NormalizerError(
                    f"key {key!r}: unknown mode {mode!r}; expected one of {MODES}"
                )
        if sketch_size < 2:
            raise ValueError(f"sketch_size must be >= 2, got {sketch_size}")
        self.modes = dict(modes)
        self.eps = eps
        self._acc = {k: _Running(k, m != "image", sketch_size) for k, m in modes.items()}
        self._batches = 0

    def update(self, batch: Mapping[str, Any], *, where: str | None = None) -> None:
        """Add a batch of arrays shaped ``(N, *feature_shape)``; reduces over N (frames).

        ``where`` names the batch in errors and warnings (default ``"batch <i>"``); a value
        that is not finite or not within float32 range raises ``NormalizerError`` naming
        ``where``, the frame, the key and the element.
        """
        label = f"batch {self._batches}" if where is None else where
        self._batches += 1
        for key, value in batch.items():
            if key in self._acc:
                if isinstance(value, torch.Tensor):
                    value = value.detach().cpu().numpy()
                self._acc[key].update(np.asarray(value), label)

    def rank_error(self, key: str) -> int:
        """Bound, in frames, on how far the rank of ``key``'s q01/q99 may be from the exact one."""
        run = self._acc[key]
        if run.sketch is None:
            raise NormalizerError(f"key {key!r}: no quantile sketch (no data or image mode)")
        return run.sketch.error

    def finalize(self) -> Normalizer:
        """The stats so far as a ``Normalizer``; every key must have seen data."""
        empty = [k for k, r in self._acc.items() if r.count == 0]
        if empty:
            raise NormalizerError(f"keys {empty} received no data; batches had none of them")
        stats = {k: r.result() for k, r in self._acc.items()}
        for key, run in self._acc.items():
            for note in run.collapsed(self.modes[key], stats[key]):
                warnings.warn(note, RuntimeWarning, stacklevel=2)
        return Normalizer(cast(Mapping[str, NormMode], self.modes), stats, eps=self.eps)


def compute_stats(
    batches: Iterable[Mapping[str, Any]],
    modes: Mapping[str, NormMode],
    *,
    sketch_size: int = 8192,
) -> Normalizer:
    """Stream ``batches`` through a ``StatsAccumulator`` and return the ``Normalizer``."""
    acc = StatsAccumulator(modes, sketch_size=sketch_size)
    for batch in batches:
        acc.update(batch)
    return acc.finalize()
