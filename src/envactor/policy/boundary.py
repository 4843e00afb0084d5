"""Checks and conversions at the policy boundary: numpy/torch observations in, tensors inside."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

from envactor.normalize import Normalizer
from envactor.policy.specs import FeatureSpec


class ObservationError(ValueError):
    """An observation that does not match the policy's declared input features."""


def batch_size_of(
    obs: Mapping[str, Any], features: Mapping[str, FeatureSpec], steps: int = 1
) -> int:
    """The common batch size B of ``obs``, checking every declared key is there and batched.

    ``steps > 1``: each key holds an observation history ``(B, steps, ...)`` (training windows of
    a policy with ``n_obs_steps = steps``)."""
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
        lead = () if steps == 1 else (steps,)
        if shape[1:] != (*lead, *spec.shape):
            want = ", ".join(map(str, (*lead, *spec.shape)))
            if steps > 1:
                hint = f" (B, n_obs_steps={steps}, ...): one history window per row"
            else:
                hint = " (no batch dimension?)" if shape == spec.shape else ""
            raise ObservationError(
                f"observation[{key!r}]: expected shape (B, {want}), got {shape}{hint}"
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


# The C++ guard that ``torch.inference_mode()`` wraps: entering it directly skips building and
# entering a Python context manager per call (~5 us with the network's data in the caches).
inference_guard: Callable[[bool], AbstractContextManager[Any]] = getattr(
    torch._C, "_InferenceMode", torch.inference_mode
)

_FLOAT32 = np.dtype(np.float32)
_UINT8 = np.dtype(np.uint8)
_OTHER_FLOATS = (np.dtype(np.float64), np.dtype(np.float16))
Affine = tuple[torch.Tensor, torch.Tensor]


class FastBoundary:
    """The policy boundary for the common case on CPU: numpy observations in, numpy chunk out.

    It gives the same tensors and arrays as ``batch_size_of`` + ``to_tensor`` +
    ``Normalizer.normalize``, and ``unnormalize`` + ``to_numpy`` (the same constants and one
    ``addcmul`` per key), with what depends only on the policy looked up once. Torch ops rather
    than numpy ufuncs: after the network ran, torch's code is warm in the caches and numpy's is
    not, so each ufunc costs more than the op. Anything unusual (torch inputs, a missing key, a
    wrong shape or dtype, stats that do not fit) answers None, and the caller takes the general
    path, which raises its errors.

    Args:
        features: the policy's input features; ``norm``: its normalizer; ``action_key``: the
            normalizer key of actions; ``action_shape``: ``(H, A)``; ``device``: the policy's
            (``usable`` is False unless it is the CPU). All are kept as given.
    """

    def __init__(
        self,
        features: Mapping[str, FeatureSpec],
        norm: Normalizer,
        action_key: str,
        action_shape: tuple[int, int],
        device: torch.device,
    ) -> None:
        self.features = features
        self.norm = norm
        self.horizon, self.action_dim = action_shape
        self.device = device
        self.usable = device.type == "cpu" and all(k in norm for k in (*features, action_key))
        self.inputs: list[tuple[str, tuple[int, ...], bool, Affine | None]] = []
        self.action: Affine | None = None
        if self.usable:
            for key, spec in features.items():
                affine = self._affine(key, spec.shape, inverse=False)
                self.inputs.append((key, spec.shape, spec.dtype == "uint8", affine))
            self.action = self._affine(action_key, action_shape, inverse=True)

    def _affine(self, key: str, shape: tuple[int, ...], inverse: bool) -> Affine | None:
        pair = self.norm.affine(key, inverse, torch.device("cpu"))
        if pair is not None:
            n = pair[0].dim()
            if n > len(shape) or (n and shape[len(shape) - n :] != tuple(pair[0].shape)):
                self.usable = False  # the normalizer's own check names the mismatch
        return pair

    def prepare(self, obs: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], int] | None:
        """Normalized CPU tensors per feature (float32; uint8 for identity images) and B."""
        out: dict[str, torch.Tensor] = {}
        batch = -1
        for key, shape, is_uint8, affine in self.inputs:
            value = obs.get(key)
            if type(value) is not np.ndarray:
                return None
            full = value.shape
            if full[1:] != shape or not full:
                return None
            dtype = value.dtype
            if is_uint8:
                if dtype is not _UINT8:
                    return None
            elif dtype is not _FLOAT32 and dtype not in _OTHER_FLOATS:
                return None
            if full[0] != batch:
                if batch >= 0:
                    return None
                batch = full[0]
            if affine is None:  # identity: as to_tensor gives it (shares the caller's memory)
                t = torch.from_numpy(np.ascontiguousarray(value))
                out[key] = t if is_uint8 or dtype is _FLOAT32 else t.float()
                continue
            try:
                t = torch.from_numpy(value)
            except ValueError:  # negative strides
                return None
            if not is_uint8 and dtype is not _FLOAT32:
                t = t.float()  # round to float32 first, as to_tensor does
            out[key] = torch.addcmul(affine[1], t, affine[0])  # uint8 is promoted exactly
        return out, batch

    def finish(self, chunk: Any, batch: int) -> np.ndarray | None:
        """A float32 CPU chunk of shape ``(batch, H, A)`` unnormalized as numpy; None for
        anything else (the general path checks and says what is wrong)."""
        if (
            type(chunk) is not torch.Tensor
            or chunk.dtype is not torch.float32
            or chunk.shape != (batch, self.horizon, self.action_dim)
            or not chunk.is_cpu
        ):
            return None
        if self.action is None:
            return None if chunk.requires_grad else chunk.numpy()
        # under inference mode the result never requires grad, whatever the chunk does
        return torch.addcmul(self.action[1], chunk, self.action[0]).numpy()
