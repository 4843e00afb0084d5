"""Checks and conversions at the policy boundary: numpy/torch observations in, tensors inside."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from envactor.policy.specs import FeatureSpec


class ObservationError(ValueError):
    """An observation that does not match the policy's declared input features."""


def batch_size_of(obs: Mapping[str, Any], features: Mapping[str, FeatureSpec]) -> int:
    """The common batch size B of ``obs``, checking every declared key is there and batched."""
    missing = [k for k in features if k not in obs]
    if missing:
        raise ObservationError(
            f"observation is missing keys {missing}; expected keys {sorted(features)}, "
            f"got {sorted(map(str, obs))}"
        )
    sizes: dict[str, int] = {}
    for key, spec in features.items():
        value = obs[key]
        if not isinstance(value, np.ndarray | torch.Tensor):
            value = np.asarray(value)
        shape = tuple(value.shape)
        if shape[1:] != spec.shape:
            hint = " (no batch dimension?)" if shape == spec.shape else ""
            raise ObservationError(
                f"observation[{key!r}]: expected shape (B, {', '.join(map(str, spec.shape))}), "
                f"got {shape}{hint}"
            )
        sizes[key] = shape[0]
    if len(set(sizes.values())) > 1:
        raise ObservationError(f"observation keys disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def to_tensor(key: str, value: Any, spec: FeatureSpec, device: torch.device) -> torch.Tensor:
    """``value`` as a tensor on ``device``: uint8 kept for images, numbers cast to float32."""
    if isinstance(value, torch.Tensor):
        t = value
    else:
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub" or arr.dtype == np.bool_:
            raise ObservationError(
                f"observation[{key!r}]: expected a numeric array ({spec.dtype}), got dtype "
                f"{arr.dtype}"
            )
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype in (torch.complex64, torch.complex128, torch.bool):
        raise ObservationError(f"observation[{key!r}]: expected {spec.dtype}, got {t.dtype}")
    if spec.dtype == "uint8":
        if t.dtype != torch.uint8:
            raise ObservationError(f"observation[{key!r}]: expected uint8 (image), got {t.dtype}")
        return t if t.device == device else t.to(device, non_blocking=True)
    if t.dtype == torch.float32 and t.device == device:
        return t
    return t.to(device=device, dtype=torch.float32, non_blocking=True)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU float32 numpy copy of ``t`` (bfloat16 included)."""
    if t.dtype != torch.float32:
        t = t.float()
    if t.device.type == "cpu" and not t.requires_grad:
        return t.numpy()
    return t.detach().cpu().numpy()


def dummy_observation(
    features: Mapping[str, FeatureSpec], batch_size: int
) -> dict[str, np.ndarray]:
    """Zeros shaped like a batch of real observations (used by ``warmup``)."""
    return {
        key: np.zeros((batch_size, *spec.shape), dtype=spec.numpy_dtype())
        for key, spec in features.items()
    }
