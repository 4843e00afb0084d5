"""Exact per-feature stats of written episodes, in LeRobot's ``meta/stats.json`` layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["QUANTILES", "EpisodeStats"]

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


class EpisodeStats:
    """Exact per-feature stats in LeRobot's ``stats.json`` layout.

    Numeric features keep their values (float64) until ``result()``; cameras keep a 256-bin
    histogram per channel, so image quantiles are exact too. Images are reported in [0, 1] with
    shape ``(3, 1, 1)``, as LeRobot does.
    """

    def __init__(self) -> None:
        self.values: dict[str, list[np.ndarray]] = {}
        self.hist: dict[str, np.ndarray] = {}

    def update(self, arrays: Mapping[str, np.ndarray], cameras: Mapping[str, Any]) -> None:
        for key, arr in arrays.items():
            if key in cameras:
                counts = np.stack(
                    [np.bincount(arr[..., c].ravel(), minlength=256) for c in range(arr.shape[-1])]
                )
                self.hist[key] = self.hist.get(key, 0) + counts
            else:
                self.values.setdefault(key, []).append(arr.astype(np.float64))

    def result(self) -> dict[str, dict[str, list[Any]]]:
        out: dict[str, dict[str, list[Any]]] = {}
        for key, parts in self.values.items():
            x = np.concatenate(parts)
            x = x[~np.isnan(x).reshape(len(x), -1).any(axis=1)]  # NaN rows: "not recorded"
            if len(x) == 0:
                continue
            qs = np.quantile(x, QUANTILES, axis=0)
            stats = {
                "min": x.min(0),
                "max": x.max(0),
                "mean": x.mean(0),
                "std": x.std(0),
                "count": np.array([len(x)]),
            }
            stats.update({f"q{round(q * 100):02d}": v for q, v in zip(QUANTILES, qs)})
            out[key] = {k: np.atleast_1d(v).tolist() for k, v in stats.items()}
        for key, counts in self.hist.items():
            levels = np.arange(256) / 255.0
            total = counts.sum(axis=1, keepdims=True)
            p = counts / total
            mean = (p * levels).sum(axis=1)
            std = np.sqrt((p * (levels - mean[:, None]) ** 2).sum(axis=1))
            cum = np.cumsum(counts, axis=1)
            nz = counts > 0
            lo = levels[np.argmax(nz, axis=1)]
            hi = levels[255 - np.argmax(nz[:, ::-1], axis=1)]
            stats = {"min": lo, "max": hi, "mean": mean, "std": std}
            for q in QUANTILES:  # the nearest-rank level: exact for uint8 data
                rank = np.ceil(q * total[:, 0])
                stats[f"q{round(q * 100):02d}"] = levels[np.argmax(cum >= rank[:, None], axis=1)]
            entry = {k: v.reshape(-1, 1, 1).tolist() for k, v in stats.items()}
            entry["count"] = [int(total[0, 0])]
            out[key] = entry
        return out
