"""One streaming pass over data -> normalization stats (``StatsAccumulator``, ``compute_stats``).

Mean/variance by a Chan/Welford merge in float64, exact min/max, and q01/q99 from per-element
histograms whose range grows as data arrives, so a dataset larger than memory works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np
import torch

from envactor.normalize import MODES, Normalizer, NormalizerError, NormMode

__all__ = ["StatsAccumulator", "compute_stats"]


class _Histogram:
    """Per-element histograms whose range grows by merging whole bins (no data kept).

    On growth the bin width is multiplied by an integer ``k`` and the origin moves by a whole
    number of old bins, so every old bin falls entirely inside one new bin: counts stay exact.
    ``k`` is the smallest that covers the data seen so far and the slack is split between both
    ends, which keeps the width below ``2 * (max - min) / (num_bins - 2)``. A quantile read
    from the histogram is within one bin width of the exact one.
    """

    def __init__(self, first: np.ndarray, num_bins: int) -> None:
        self.n = num_bins
        flat = first.reshape(first.shape[0], -1)
        self.dmin, self.dmax = flat.min(axis=0), flat.max(axis=0)
        floor = np.maximum(np.abs(self.dmin), np.abs(self.dmax)) * 1e-9 + 1e-12
        self.lo = self.dmin.copy()
        self.width = np.maximum(self.dmax - self.dmin, floor) / num_bins
        self.counts = np.zeros((self.lo.size, num_bins), dtype=np.int64)
        self.add(first)

    def add(self, x: np.ndarray) -> None:
        flat = x.reshape(x.shape[0], -1)
        self._grow(flat.min(axis=0), flat.max(axis=0))
        idx = np.clip(np.floor((flat - self.lo) / self.width), 0, self.n - 1).astype(np.int64)
        idx += np.arange(flat.shape[1], dtype=np.int64) * self.n
        self.counts += np.bincount(idx.ravel(), minlength=self.counts.size).reshape(
            self.counts.shape
        )

    def _grow(self, new_lo: np.ndarray, new_hi: np.ndarray) -> None:
        lo, w, n = self.lo, self.width, self.n
        self.dmin, self.dmax = np.minimum(self.dmin, new_lo), np.maximum(self.dmax, new_hi)
        if not ((new_lo < lo) | (new_hi > lo + n * w)).any():
            return
        # first/last occupied position in units of old bins (old bins outside are empty)
        first = np.floor((self.dmin - lo) / w)
        last = np.floor((self.dmax - lo) / w)
        k = np.maximum(np.ceil((last - first + 1) / n), 1.0)
        # new origin lo + a * w with first - a in [0, n k - (last - first + 1)]: centre the slack
        a = first - np.floor((n * k - (last - first + 1)) / 2)
        old = np.arange(n, dtype=np.float64)
        dest = np.clip(np.floor((old[None, :] - a[:, None]) / k[:, None]), 0, n - 1)
        flat_dest = (dest.astype(np.int64) + np.arange(w.size)[:, None] * n).ravel()
        merged = np.bincount(flat_dest, weights=self.counts.ravel(), minlength=self.counts.size)
        self.counts = np.rint(merged).astype(np.int64).reshape(self.counts.shape)
        self.lo = lo + a * w
        self.width = w * k

    def order_stat(self, j: float) -> np.ndarray:
        """Estimate the j-th smallest value (0-based) of every element."""
        cum = np.cumsum(self.counts, axis=1)
        b = np.argmax(cum > j, axis=1)
        rows = np.arange(cum.shape[0])
        in_bin = self.counts[rows, b]
        before = cum[rows, b] - in_bin
        frac = (j - before + 0.5) / np.maximum(in_bin, 1)
        return cast(np.ndarray, self.lo + self.width * (b + np.clip(frac, 0.0, 1.0)))

    def quantile(self, q: float, total: int) -> np.ndarray:
        """Linear-interpolated quantile like ``np.quantile``, from the histogram."""
        pos = q * (total - 1)
        j0, j1 = np.floor(pos), np.ceil(pos)
        return cast(
            np.ndarray, self.order_stat(j0) * (1 - (pos - j0)) + self.order_stat(j1) * (pos - j0)
        )


class _Running:
    """Count, mean, M2 (Chan/Welford merge, float64), min, max, and an optional histogram."""

    def __init__(self, key: str, with_quantiles: bool, num_bins: int) -> None:
        self.key, self.with_quantiles, self.num_bins = key, with_quantiles, num_bins
        self.count = 0
        self.shape: tuple[int, ...] | None = None
        self.mean = self.m2 = self.min = self.max = np.zeros(())
        self.hist: _Histogram | None = None

    def update(self, x: np.ndarray) -> None:
        if x.ndim < 1 or x.shape[0] == 0:
            raise NormalizerError(
                f"key {self.key!r}: expected shape (N, ...) with N > 0, found {x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise NormalizerError(f"key {self.key!r}: expected finite values, found NaN or inf")
        if self.shape is not None and x.shape[1:] != self.shape:
            raise NormalizerError(
                f"key {self.key!r}: expected feature shape {self.shape}, found {x.shape[1:]}"
            )
        nb = x.shape[0]
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        if self.shape is None:
            self.shape = x.shape[1:]
            self.mean, self.m2 = mb, m2b
            self.min, self.max = x.min(axis=0), x.max(axis=0)
            if self.with_quantiles:
                self.hist = _Histogram(x, self.num_bins)
        else:
            na, n = self.count, self.count + nb
            delta = mb - self.mean
            self.mean = self.mean + delta * (nb / n)
            self.m2 = self.m2 + m2b + delta**2 * (na * nb / n)
            self.min = np.minimum(self.min, x.min(axis=0))
            self.max = np.maximum(self.max, x.max(axis=0))
            if self.hist is not None:
                self.hist.add(x)
        self.count += nb

    def result(self) -> dict[str, np.ndarray]:
        assert self.shape is not None
        out = {
            "mean": np.asarray(self.mean),
            "std": np.sqrt(self.m2 / self.count),
            "min": np.asarray(self.min),
            "max": np.asarray(self.max),
        }
        if self.hist is not None:
            for name, q in (("q01", 0.01), ("q99", 0.99)):
                est = self.hist.quantile(q, self.count).reshape(self.shape)
                out[name] = np.clip(est, self.min, self.max)
        return out


class StatsAccumulator:
    """One pass over a dataset of any size: mean/std/min/max exactly, q01/q99 approximately.

    Quantiles come from per-element histograms of ``num_bins`` bins whose range grows with the
    data; the estimate is within one bin width of ``np.quantile`` (``bin_width(key)`` reports
    it; it stays below ``2 * (max - min) / (num_bins - 2)``). Keys in mode ``image`` skip histograms
    (one per pixel would be too large). Batch keys with no mode are ignored.
    """

    def __init__(
        self, modes: Mapping[str, NormMode], *, num_bins: int = 2048, eps: float = 1e-8
    ) -> None:
        for key, mode in modes.items():
            if mode not in MODES:
                raise NormalizerError(
                    f"key {key!r}: unknown mode {mode!r}; expected one of {MODES}"
                )
        self.modes = dict(modes)
        self.eps = eps
        self._acc = {k: _Running(k, m != "image", num_bins) for k, m in modes.items()}

    def update(self, batch: Mapping[str, Any]) -> None:
        """Add a batch of arrays shaped ``(N, *feature_shape)``; reduces over N."""
        for key, value in batch.items():
            if key in self._acc:
                if isinstance(value, torch.Tensor):
                    value = value.detach().cpu().numpy()
                self._acc[key].update(np.asarray(value, dtype=np.float64))

    def bin_width(self, key: str) -> np.ndarray:
        """Current histogram bin width per element of ``key`` (the quantile error bound)."""
        run = self._acc[key]
        if run.hist is None or run.shape is None:
            raise NormalizerError(f"key {key!r}: no quantile histogram (no data or image mode)")
        return run.hist.width.reshape(run.shape).copy()

    def finalize(self) -> Normalizer:
        """The stats so far as a ``Normalizer``; every key must have seen data."""
        empty = [k for k, r in self._acc.items() if r.count == 0]
        if empty:
            raise NormalizerError(f"keys {empty} received no data; batches had none of them")
        return Normalizer(
            cast(Mapping[str, NormMode], self.modes),
            {k: r.result() for k, r in self._acc.items()},
            eps=self.eps,
        )


def compute_stats(
    batches: Iterable[Mapping[str, Any]], modes: Mapping[str, NormMode], *, num_bins: int = 2048
) -> Normalizer:
    """Stream ``batches`` through a ``StatsAccumulator`` and return the ``Normalizer``."""
    acc = StatsAccumulator(modes, num_bins=num_bins)
    for batch in batches:
        acc.update(batch)
    return acc.finalize()
