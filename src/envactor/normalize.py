"""Feature normalization with stats that travel with the policy, and one-pass stats from data.

Modes (eps is applied in both directions, so ``unnormalize(normalize(x)) == x``):

- ``mean_std``: ``(x - mean) / (std + eps)``
- ``min_max``:  ``2 (x - min) / (max - min + eps) - 1``
- ``quantile``: ``2 (x - q01) / (q99 - q01 + eps) - 1``
- ``identity``: unchanged
- ``image``:    ``x / 255`` (uint8 pixels to [0, 1] floats); inverse ``x * 255``

A key without a mode is an error, never a silent pass-through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from envactor.values import FLOAT32_MAX

__all__ = [
    "MODE_STATS",
    "NormMode",
    "Normalizer",
    "NormalizerError",
]

NormMode = Literal["mean_std", "min_max", "quantile", "identity", "image"]
MODES: tuple[str, ...] = get_args(NormMode)
MODE_STATS: dict[str, tuple[str, ...]] = {
    "mean_std": ("mean", "std"),
    "min_max": ("min", "max"),
    "quantile": ("q01", "q99"),
    "identity": (),
    "image": (),
}
ALL_STATS = ("mean", "std", "min", "max", "q01", "q99")
METADATA_KEY = "envactor.normalizer"
_LOW_PRECISION = (torch.float16, torch.bfloat16)
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class NormalizerError(KeyError):
    """Unknown key, missing or inconsistent stats, or a malformed stats file."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _as_float64(value: Any, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(value, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(arr) <= FLOAT32_MAX)  # NaN, inf, or beyond what float32 holds
    if bad.any():
        found = arr.reshape(-1)[int(np.argmax(bad.reshape(-1)))]
        raise NormalizerError(
            f"{where}: expected finite numbers within float32 range "
            f"(|x| <= {FLOAT32_MAX:.8g}), found {float(found)!r}"
        )
    return arr


class Normalizer:
    """Per-key normalization for numpy arrays and torch tensors (same type out as in).

    Args:
        modes: mode per feature key, e.g. ``{"observation.state": "mean_std"}``.
        stats: per key, the arrays its mode needs (extra stats are kept, so the mode can be
            switched later); all arrays of one key share the feature shape.
        eps: added to every denominator, in both directions.
    """

    def __init__(
        self,
        modes: Mapping[str, NormMode],
        stats: Mapping[str, Mapping[str, Any]],
        eps: float = 1e-8,
    ) -> None:
        self.eps = float(eps)
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise NormalizerError(f"eps: expected a finite number >= 0, found {eps!r}")
        self._modes: dict[str, NormMode] = {}
        self._stats: dict[str, dict[str, np.ndarray]] = {}
        for key in stats:
            if key not in modes:
                raise NormalizerError(
                    f"stats given for key {key!r} but no mode; known modes: {sorted(modes)}"
                )
        for key, mode in modes.items():
            if mode not in MODES:
                raise NormalizerError(
                    f"key {key!r}: unknown mode {mode!r}; expected one of {MODES}"
                )
            self._modes[key] = mode
            self._stats[key] = self._check_stats(key, mode, stats.get(key, {}))
        # (center, scale, bias): normalize = (x - center) / scale + bias; identity has none
        self._params: dict[str, tuple[np.ndarray, np.ndarray, float] | None] = {
            k: self._affine(k) for k in self._modes
        }
        for key, params in self._params.items():
            if params is not None:
                self._check_float32(key, *params)
        self._torch_cache: dict[
            tuple[str, torch.device, torch.dtype, bool], tuple[torch.Tensor, torch.Tensor]
        ]
        self._torch_cache = {}

    @staticmethod
    def _check_stats(key: str, mode: str, given: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, value in given.items():
            if name not in ALL_STATS:
                raise NormalizerError(f"key {key!r}: unknown stat {name!r}; expected {ALL_STATS}")
            out[name] = _as_float64(value, f"key {key!r} stat {name!r}")
        for name in MODE_STATS[mode]:
            if name not in out:
                raise NormalizerError(
                    f"key {key!r} (mode {mode!r}) is missing stat {name!r}; "
                    f"expected {list(MODE_STATS[mode])}, found {sorted(out)}"
                )
        shapes = {n: a.shape for n, a in out.items()}
        if len(set(shapes.values())) > 1:
            raise NormalizerError(f"key {key!r}: stats disagree on shape: {shapes}")
        for lo, hi in (("min", "max"), ("q01", "q99")):
            if lo in out and hi in out and np.any(out[hi] < out[lo]):
                raise NormalizerError(f"key {key!r}: expected {hi} >= {lo} everywhere")
        if "std" in out and np.any(out["std"] < 0):
            raise NormalizerError(f"key {key!r}: expected std >= 0 everywhere")
        return out

    def _check_float32(self, key: str, center: np.ndarray, scale: np.ndarray, bias: float) -> None:
        """Refuse stats whose folded float32 constants (see ``_cached``) would overflow."""
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            folded = {
                "1 / scale": 1.0 / scale,
                "center / scale": center / scale,
                "scale": scale,
                "center - bias * scale": center - bias * scale,
            }
        for name, value in folded.items():
            bad = ~(np.abs(value) <= FLOAT32_MAX)
            if np.any(bad):
                i = int(np.argmax(bad.reshape(-1)))
                c, sc = np.broadcast_to(center, bad.shape), np.broadcast_to(scale, bad.shape)
                zero = float(sc.reshape(-1)[i]) == 0.0
                hint = "use eps > 0" if zero else "rescale it or use mode 'identity'"
                raise NormalizerError(
                    f"key {key!r} (mode {self._modes[key]!r}): expected normalization "
                    f"constants within float32 range (|x| <= {FLOAT32_MAX:.8g}), found "
                    f"{name} = {float(value.reshape(-1)[i]):.4g} (center "
                    f"{float(c.reshape(-1)[i]):.4g}, scale {float(sc.reshape(-1)[i]):.4g} with eps "
                    f"{self.eps:g}): {hint}"
                )

    def _affine(self, key: str) -> tuple[np.ndarray, np.ndarray, float] | None:
        mode, s, eps = self._modes[key], self._stats[key], self.eps
        if mode == "mean_std":
            return s["mean"], s["std"] + eps, 0.0
        if mode in ("min_max", "quantile"):
            lo, hi = ("min", "max") if mode == "min_max" else ("q01", "q99")
            return s[lo], (s[hi] - s[lo] + eps) / 2.0, -1.0
        if mode == "image":
            return np.zeros(()), np.full((), 255.0), 0.0
        return None

    # ----------------------------------------------------------------- queries
    @property
    def keys(self) -> list[str]:
        """Feature keys this normalizer knows."""
        return list(self._modes)

    @property
    def modes(self) -> dict[str, NormMode]:
        """Mode per key (a copy)."""
        return dict(self._modes)

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Float64 stats per key (copies)."""
        return {k: {n: a.copy() for n, a in v.items()} for k, v in self._stats.items()}

    def __contains__(self, key: object) -> bool:
        return key in self._modes

    def __repr__(self) -> str:
        return f"Normalizer({self._modes}, eps={self.eps})"

    def _require(self, key: str) -> tuple[np.ndarray, np.ndarray, float] | None:
        if key not in self._modes:
            raise NormalizerError(
                f"no normalization stats/mode for key {key!r}; known keys: {self.keys}"
            )
        return self._params[key]

    # ----------------------------------------------------------------- apply
    def normalize(self, key: str, x: ArrayT) -> ArrayT:
        """Normalize ``x`` (shape ``(..., *feature_shape)``) for ``key``."""
        return self._apply(key, x, inverse=False)

    def unnormalize(self, key: str, x: ArrayT) -> ArrayT:
        """Invert ``normalize`` for ``key``."""
        return self._apply(key, x, inverse=True)

    def normalize_batch(
        self, batch: Mapping[str, Any], keys: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """Normalize ``keys`` of ``batch`` (default: all; unknown keys are errors).

        Keys of ``batch`` left out of an explicit ``keys`` pass through unchanged.
        """
        chosen = list(batch) if keys is None else list(keys)
        absent = [k for k in chosen if k not in batch]
        if absent:
            raise NormalizerError(f"keys {absent} requested but not in the batch {list(batch)}")
        out = dict(batch)
        for k in chosen:
            out[k] = self.normalize(k, batch[k])
        return out

    def _check_shape(self, key: str, shape: tuple[int, ...], center: np.ndarray) -> None:
        n = center.ndim
        if n and tuple(shape[len(shape) - n :]) != center.shape:
            raise NormalizerError(
                f"key {key!r}: expected trailing shape {center.shape} (stats shape), "
                f"found input shape {tuple(shape)}"
            )

    def _apply(self, key: str, x: ArrayT, inverse: bool) -> ArrayT:
        if isinstance(x, torch.Tensor) and x.dtype == torch.float32:  # the hot path
            hit = self._torch_cache.get((key, x.device, torch.float32, inverse))
            if hit is not None and x.shape[x.dim() - hit[0].dim() :] == hit[0].shape:
                return cast(ArrayT, torch.addcmul(hit[1], x, hit[0]))
        params = self._require(key)
        if params is None:
            return x
        center, scale, bias = params
        if isinstance(x, torch.Tensor):
            self._check_shape(key, tuple(x.shape), center)
            dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
            mul, add = self._cached(key, x.device, dtype, inverse)
            y = x if x.dtype == dtype else x.to(dtype)
            out_t = torch.addcmul(add, y, mul)  # one fused op: y * mul + add
            return out_t.to(x.dtype) if x.dtype in _LOW_PRECISION else out_t
        arr = np.asarray(x)
        self._check_shape(key, arr.shape, center)
        y64 = arr.astype(np.float64, copy=False)
        out = (y64 - bias) * scale + center if inverse else (y64 - center) / scale + bias
        out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float32)
        return cast(ArrayT, out.astype(out_dtype, copy=False))

    def affine(
        self, key: str, inverse: bool, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mul, add)`` with ``y = torch.addcmul(add, x, mul)`` for tensors of ``dtype`` on
        ``device``: the constants ``normalize`` (``unnormalize`` when ``inverse``) applies;
        None for identity. Cached; callers must not modify them."""
        if self._require(key) is None:
            return None
        return self._cached(key, device, dtype, inverse)

    def _cached(
        self, key: str, device: torch.device, dtype: torch.dtype, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mul, add) with ``y = x * mul + add``: forward mul = 1/scale, add = bias - c/scale;
        inverse mul = scale, add = c - bias * scale (folded in float64, then cast)."""
        entry = self._torch_cache.get((key, device, dtype, inverse))
        if entry is None:
            params = self._params[key]
            assert params is not None
            center, scale, bias = params
            if inverse:
                mul, add = scale, center - bias * scale
            else:
                mul, add = 1.0 / scale, bias - center / scale
            # normal tensors even when first used under inference_mode, so a later autograd
            # pass (learn mode, guided sampling) may save them for backward
            with torch.inference_mode(False):  # as_tensor keeps 0-d stats 0-d (image mode)
                mul_t, add_t = (
                    torch.as_tensor(np.asarray(a), dtype=dtype, device=device) for a in (mul, add)
                )
            entry = (mul_t, add_t)
            self._torch_cache[(key, device, dtype, inverse)] = entry
        return entry

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Stats as float64 tensors named ``"<key>/<stat>"``."""
        return {
            f"{key}/{name}": torch.from_numpy(np.ascontiguousarray(arr).copy())
            for key, s in self._stats.items()
            for name, arr in s.items()
        }

    def metadata(self) -> dict[str, str]:
        """Safetensors metadata: modes and eps as one JSON string."""
        return {METADATA_KEY: json.dumps({"format": 1, "modes": self._modes, "eps": self.eps})}

    def save(self, path: str | Path) -> None:
        """Write stats, modes and eps to one safetensors file."""
        save_file(self.state_dict(), str(path), metadata=self.metadata())

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        """Read a file written by ``save``; anything malformed names the file."""
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as e:  # safetensors raises its own error type, OSError, ValueError
            raise NormalizerError(f"{path}: cannot read normalizer stats: {e}") from e
        try:
            return cls.from_tensors(tensors, meta)
        except NormalizerError as e:
            raise NormalizerError(f"{path}: {e}") from e

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
    ) -> Normalizer:
        """Rebuild from ``state_dict()`` tensors and ``metadata()`` (strict)."""
        if METADATA_KEY not in metadata:
            raise NormalizerError(
                f"expected metadata key {METADATA_KEY!r}, found {sorted(metadata)}"
            )
        try:
            info = json.loads(metadata[METADATA_KEY])
            modes, eps = info["modes"], float(info["eps"])
        except (ValueError, KeyError, TypeError) as e:
            raise NormalizerError(f"malformed {METADATA_KEY!r} metadata: {e}") from e
        stats: dict[str, dict[str, np.ndarray]] = {}
        for name, t in tensors.items():
            key, sep, stat = name.rpartition("/")
            if not sep or key not in modes:
                raise NormalizerError(
                    f"tensor {name!r} is not '<key>/<stat>' for a known key {sorted(modes)}"
                )
            stats.setdefault(key, {})[stat] = t.detach().to("cpu").numpy()
        return cls(modes, stats, eps=eps)
