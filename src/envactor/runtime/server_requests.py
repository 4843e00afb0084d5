"""What a policy-server request may contain, checked before it can reach a batch.

A request frame is one robot's UNBATCHED observation dict (openpi style), optionally with the
real-time-chunking fields ``prev_action`` (L, A), ``est_delay`` (d), ``executed`` (s) and
``rtc`` (``{"schedule", "max_guidance_weight", "jacobian", "method"}``). Keys the policy does not
declare (an openpi ``"prompt"``, say) are ignored. A frame with ``"__ctrl__"`` is a control frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from envactor.chunking.masks import SCHEDULES
from envactor.policy.specs import FeatureSpec

CTRL_KEY = "__ctrl__"
CONTROL_FRAMES = ("episode_start", "episode_end", "set_seed")
RTC_KEYS = ("prev_action", "est_delay", "executed", "rtc")
_RTC_OPTIONS = {
    "schedule": SCHEDULES,
    "jacobian": ("vjp", "identity"),
    "method": ("auto", "blend"),
}


class RequestError(ValueError):
    """A request the server refuses; ``kind`` names the error type sent back to the client."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def reply(self) -> dict[str, Any]:
        """The error reply frame ``{"error": {"type": ..., "message": ...}}``."""
        return {"error": {"type": self.kind, "message": str(self)}}


@dataclass(frozen=True)
class Guidance:
    """How a guided request is run; requests with equal ``Guidance`` share one forward pass."""

    executed: int | None = None
    schedule: str = "exp"
    max_guidance_weight: float = 5.0
    jacobian: str = "vjp"
    method: str = "auto"


@dataclass
class InferRequest:
    """A validated inference request of one connection (``env_id``)."""

    env_id: int
    obs: dict[str, np.ndarray]
    prev_action: np.ndarray | None = None
    delay: int = 0
    guidance: Guidance | None = None
    arrived: float = 0.0

    @property
    def group(self) -> Guidance | None:
        """Batch key: None for plain requests, the guidance settings for guided ones."""
        return self.guidance


def _obs_error(message: str) -> RequestError:
    return RequestError("ObservationError", message)


def _as_array(key: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic | int | float | list | tuple) and not isinstance(value, bool):
        try:
            return np.asarray(value)
        except ValueError as exc:
            raise _obs_error(f"{key}: expected a numeric array, got a ragged list: {exc}") from None
    raise _obs_error(f"{key}: expected a numeric array, got {type(value).__name__}")


def _check_numeric(key: str, arr: np.ndarray, want: str) -> None:
    if arr.dtype.kind not in "iuf":
        raise _obs_error(f"{key}: expected dtype {want}, got {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise _obs_error(f"{key}: expected finite values, found NaN or inf")


def parse_observation(
    msg: Mapping[str, Any], features: Mapping[str, FeatureSpec]
) -> dict[str, np.ndarray]:
    """The declared features of ``msg``, each checked against its spec (shape without batch)."""
    missing = [k for k in features if k not in msg]
    if missing:
        raise _obs_error(
            f"observation is missing keys {missing}; expected keys {sorted(features)}, "
            f"got {sorted(map(str, msg))}"
        )
    out: dict[str, np.ndarray] = {}
    for key, spec in features.items():
        where = f"observation[{key!r}]"
        arr = _as_array(where, msg[key])
        if arr.shape != spec.shape:
            raise _obs_error(f"{where}: expected shape {spec.shape}, got {arr.shape}")
        if spec.dtype == "uint8":
            if arr.dtype != np.uint8:
                raise _obs_error(f"{where}: expected dtype uint8, got {arr.dtype}")
        else:
            _check_numeric(where, arr, f"{spec.dtype} (or another int/float dtype)")
        out[key] = arr
    return out


def _count(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise RequestError("RequestError", f"{name}: expected an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise RequestError(
            "RequestError", f"{name}: expected {low} <= {name} <= {high}, got {value}"
        )
    return int(value)


def _guidance(msg: Mapping[str, Any], horizon: int) -> Guidance:
    executed = msg.get("executed")
    s = None if executed is None else _count("executed", executed, 0, horizon)
    opts = msg.get("rtc") or {}
    if not isinstance(opts, Mapping):
        raise RequestError("RequestError", f"rtc: expected a dict of options, got {opts!r}")
    known = sorted({*_RTC_OPTIONS, "max_guidance_weight"})
    unknown = sorted(set(map(str, opts)) - set(known))
    if unknown:
        raise RequestError("RequestError", f"rtc: unknown options {unknown}; expected {known}")
    for name, allowed in _RTC_OPTIONS.items():
        if name in opts and opts[name] not in allowed:
            raise RequestError(
                "RequestError",
                f"rtc[{name!r}]: expected one of {list(allowed)}, got {opts[name]!r}",
            )
    beta = opts.get("max_guidance_weight", 5.0)
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta <= 1e6:
        raise RequestError(
            "RequestError",
            f"rtc['max_guidance_weight']: expected a number in [0, 1e6], got {beta!r}",
        )
    return Guidance(
        executed=s,
        schedule=str(opts.get("schedule", "exp")),
        max_guidance_weight=float(beta),
        jacobian=str(opts.get("jacobian", "vjp")),
        method=str(opts.get("method", "auto")),
    )


def parse_request(
    msg: Any,
    env_id: int,
    features: Mapping[str, FeatureSpec],
    action_shape: tuple[int, int],
    arrived: float = 0.0,
) -> InferRequest:
    """A decoded frame -> a validated ``InferRequest`` (raises RequestError with the reason)."""
    if not isinstance(msg, Mapping):
        raise RequestError(
            "RequestError",
            f"expected a msgpack map (an observation dict), got {type(msg).__name__}",
        )
    obs = parse_observation(msg, features)
    req = InferRequest(env_id=env_id, obs=obs, arrived=arrived)
    prev = msg.get("prev_action")
    if prev is None:
        return req
    horizon, adim = action_shape
    arr = _as_array("prev_action", prev)
    if arr.ndim != 2 or arr.shape[1] != adim or arr.shape[0] > horizon:
        raise RequestError(
            "RequestError", f"prev_action: expected shape (L<={horizon}, {adim}), got {arr.shape}"
        )
    _check_numeric("prev_action", arr, "float32")
    delay = msg.get("est_delay")
    req.delay = 0 if delay is None else _count("est_delay", delay, 0, horizon)
    guidance = _guidance(msg, horizon)
    if arr.shape[0] > 0:  # an empty remainder has nothing to continue: a plain request
        req.prev_action = arr.astype(np.float32, copy=False)
        req.guidance = guidance
    return req
