"""What a policy-server request may contain, checked before it can reach a batch.

A request frame is one robot's UNBATCHED observation dict (openpi style), optionally with the
real-time-chunking fields of a :class:`~envactor.chunking.GuidanceRequest` for that robot:
``prev_action`` (L, A) the unexecuted remainder, ``est_delay`` (d), ``executed`` (s) and ``rtc``
(``{"schedule", "max_guidance_weight", "jacobian", "method", "executor"}``; ``executor`` names a
registered executor, default ``rtc``, whose policy call runs the request and whose method and
jacobian are the defaults). Keys the policy does not declare (an openpi ``"prompt"``, say) are
ignored. A frame with ``"__ctrl__"`` is a control frame; ``{"__ctrl__": "observe", <observation
keys>}`` records one step's observation without asking for a chunk (observation history).

Float values must stay finite once cast to the dtype the policy computes in (float32; float16 for
a float16 feature): ``1e300`` in a float64 array is refused, not turned into inf. The guidance
weight ``max_guidance_weight`` must lie in ``[0, MAX_GUIDANCE_WEIGHT]`` (100; the default is 5).

Frames are decoded with a budget (:func:`decode_frame`): at most ``MAX_FRAME_ITEMS`` list and map
entries in all, so a frame of nested lists (millions of small integers fit in a few MB) is
refused after a bounded amount of work instead of being built and converted in full. Arrays
travel as openpi's ndarray maps, which cost one entry each whatever their size. A frame too
small to hold that many entries is decoded without the count. ``RequestParser`` holds a
policy's checks prepared once (a server makes one when it starts); ``parse_observation`` and
``parse_request`` make one per call.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from envactor.chunking.guidance import MAX_GUIDANCE_WEIGHT
from envactor.chunking.masks import SCHEDULES
from envactor.chunking.request import (
    DEFAULT_SCHEDULE,
    JACOBIANS,
    METHOD_ALIASES,
    METHODS,
    GuidanceRequest,
)
from envactor.policy.specs import FeatureSpec
from envactor.runtime.executors import EXECUTORS
from envactor.runtime.serving.wire import WireError, _object_hook, _refuse_ext

CTRL_KEY = "__ctrl__"
CONTROL_FRAMES = ("episode_start", "episode_end", "set_seed", "observe")
RTC_KEYS = ("prev_action", "est_delay", "executed", "rtc")
DEFAULT_EXECUTOR = "rtc"
MAX_FRAME_ITEMS = 1 << 19
"""Most list and map entries one frame may hold (524,288; each list or map counts its length plus
one): a 256 x 256 x 3 image sent as nested lists (262,401 entries) fits; numpy arrays (openpi's
ndarray maps) cost one entry each whatever their size."""
_RTC_OPTIONS = {
    "schedule": SCHEDULES,
    "jacobian": JACOBIANS,
    "method": (*METHODS, *METHOD_ALIASES),
}


class RequestError(ValueError):
    """A request the server refuses; ``kind`` names the error type sent back to the client."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def reply(self) -> dict[str, Any]:
        """The error reply frame ``{"error": {"type": ..., "message": ...}}``."""
        return {"error": {"type": self.kind, "message": str(self)}}


@dataclass(slots=True)
class InferRequest:
    """A validated inference request of one connection (``env_id``): plain, or with the
    guidance request of its robot and the executor that runs it."""

    env_id: int
    obs: dict[str, np.ndarray]
    guidance: GuidanceRequest | None = None
    executor: str = DEFAULT_EXECUTOR
    arrived: float = 0.0

    @property
    def group(self) -> tuple[str, tuple[str, float, str, str]] | None:
        """Batch key: None for plain requests, (executor, settings) for guided ones."""
        g = self.guidance
        return None if g is None else (self.executor, g.settings)


class _Budget:
    """msgpack hooks that count list/map entries and stop the decode past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.left = int(limit)
        self.limit = int(limit)

    def _spend(self, n: int) -> None:
        self.left -= n + 1
        if self.left < 0:
            raise WireError(
                f"frame holds more than {self.limit} list/map entries; expected numpy arrays "
                "(openpi's ndarray maps), not large nested lists"
            )

    def lists(self, obj: list[Any]) -> list[Any]:
        self._spend(len(obj))
        return obj

    def maps(self, obj: dict[Any, Any]) -> Any:
        self._spend(len(obj))
        return _object_hook(obj)


_LIMITS: dict[str, Any] = {
    "ext_hook": _refuse_ext, "raw": False, "strict_map_key": True, "max_str_len": 1 << 20,
    "max_array_len": 1 << 16, "max_map_len": 1 << 12,
}  # fmt: skip
"""msgpack's C unpacker with the frame limits (strings 1 MiB, arrays 65,536, maps 4,096
entries), str and bytes map keys only, extension types refused."""
_unpack = functools.partial(msgpack.unpackb, object_hook=_object_hook, **_LIMITS)


def decode_frame(data: bytes, max_items: int = MAX_FRAME_ITEMS) -> Any:
    """One msgpack frame -> Python objects with numpy arrays (as :func:`wire.unpackb`), refused
    with a ``WireError`` once it holds more than ``max_items`` list/map entries.

    The count runs while msgpack builds the objects (a hook per finished list and map, each at
    most 65,536 entries long), so a hostile frame costs at most ``max_items`` entries of work.
    A frame of ``n`` bytes holds fewer than ``2 n`` entries (every object takes at least one
    byte, and counts once as an entry of its container and once more if it is a container), so
    frames of at most ``max_items // 2`` bytes (256 KiB by default: every frame the server
    decodes on its event loop) are decoded without the count: it could never refuse them."""
    if type(data) is not bytes and not isinstance(data, bytearray | memoryview):
        raise WireError(f"expected a binary frame (bytes), got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    try:
        if 2 * size <= max_items:
            return _unpack(data)
        budget = _Budget(max_items)
        return msgpack.unpackb(data, list_hook=budget.lists, object_hook=budget.maps, **_LIMITS)
    except WireError:
        raise
    except msgpack.StackError:
        raise WireError("frame is nested deeper than the msgpack unpacker allows") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = str(exc) or type(exc).__name__
        raise WireError(f"could not decode the frame as msgpack: {detail}") from None


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


_FLOAT32 = np.dtype(np.float32)
_UINT8 = np.dtype(np.uint8)
_COMPUTE = {"float32": _FLOAT32, "float64": _FLOAT32, "bfloat16": _FLOAT32,
            "float16": np.dtype(np.float16)}  # fmt: skip
"""The dtype the policy computes a float feature in (its values must stay finite in it)."""


def all_finite(arr: np.ndarray) -> bool:
    """Whether every value of the float array ``arr`` is finite (no NaN, no inf), as
    ``np.isfinite(arr).all()``; up to 65,536 values (a robot's state, an action chunk) by a
    count of the finite ones, which takes half the time of the reduction there."""
    finite = np.isfinite(arr)
    if arr.size <= 1 << 16:
        return int(np.count_nonzero(finite)) == arr.size
    return bool(finite.all())


def _check_numeric(
    key: str, arr: np.ndarray, want: str, compute: np.dtype | None = _FLOAT32
) -> None:
    """dtype int/float, and finite both as sent and once cast to ``compute`` (if given)."""
    dtype = arr.dtype
    kind = dtype.kind
    if kind not in "iuf":
        raise _obs_error(f"{key}: expected dtype {want}, got {dtype}")
    if kind == "f":
        if not all_finite(arr):
            raise _obs_error(f"{key}: expected finite values, found NaN or inf")
        if compute is None or dtype.itemsize <= compute.itemsize:
            return  # no wider than ``compute``: finite as sent means finite once cast
    elif compute is None:
        return
    if arr.size == 0:
        return
    limit = float(np.finfo(compute).max)
    peak = float(np.abs(arr.astype(np.float64, copy=False)).max())
    if peak > limit:
        raise _obs_error(
            f"{key}: expected |values| <= {limit:.4g} (the {compute} the policy computes in), "
            f"got {peak:.4g}, which would become inf"
        )


def _check_of(key: str, spec: FeatureSpec) -> tuple[Any, ...]:
    """(key, where, shape, uint8 only, wanted dtype text, compute dtype) of one feature."""
    want = f"{spec.dtype} (or another int/float dtype)"
    where = f"observation[{key!r}]"
    return key, where, spec.shape, spec.dtype == "uint8", want, _COMPUTE.get(spec.dtype)


class RequestParser:
    """The checks of one policy's frames, prepared once: each feature key's place in error
    messages, shape, dtype rule and compute dtype, and the executor names a request may give.
    :func:`parse_observation` and :func:`parse_request` build one per call; a server builds one
    when it starts, so a frame costs only the checks themselves (same checks, same messages).

    ``executors`` defaults to ``EXECUTORS.names()``, read when first needed (it reads the
    plugins' entry points: a few ms); an executor registered later is accepted too."""

    def __init__(
        self,
        features: Mapping[str, FeatureSpec],
        action_shape: tuple[int, int],
        executors: Sequence[str] | None = None,
    ) -> None:
        self.features = features
        self.action_shape = action_shape
        self._executors = None if executors is None else frozenset(executors)
        self._keys = tuple(features)
        self._checks = [_check_of(key, spec) for key, spec in features.items()]

    @property
    def executors(self) -> frozenset[str]:
        """The executor names listed when first asked (registered, lazy and plugin ones)."""
        if self._executors is None:
            self._executors = frozenset(EXECUTORS.names())
        return self._executors

    def known_executor(self, name: Any) -> bool:
        """Whether ``name`` names an executor (listed at start, or registered since)."""
        return isinstance(name, str) and (
            name in self.executors or any(name == n for n, _ in EXECUTORS.items())
        )

    def executor_names(self) -> list[str]:
        """The executor names a request may give, sorted."""
        return sorted(self.executors.union(n for n, _ in EXECUTORS.items()))

    def observation(self, msg: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The declared features of ``msg``, each checked against its spec (shape without
        batch); raises RequestError (kind ``ObservationError``) naming the key."""
        for key in self._keys:
            if key not in msg:
                missing = [k for k in self._keys if k not in msg]
                raise _obs_error(
                    f"observation is missing keys {missing}; expected keys "
                    f"{sorted(self._keys)}, got {sorted(map(str, msg))}"
                )
        out: dict[str, np.ndarray] = {}
        for key, where, shape, uint8, want, compute in self._checks:
            value = msg[key]
            arr = value if isinstance(value, np.ndarray) else _as_array(where, value)
            if arr.shape != shape:
                raise _obs_error(f"{where}: expected shape {shape}, got {arr.shape}")
            if uint8:
                if arr.dtype != _UINT8:
                    raise _obs_error(f"{where}: expected dtype uint8, got {arr.dtype}")
            elif arr.dtype is compute:  # sent in the dtype the policy computes in (the usual)
                if not all_finite(arr):
                    raise _obs_error(f"{where}: expected finite values, found NaN or inf")
            else:
                _check_numeric(where, arr, want, compute)
            out[key] = arr
        return out

    def request(self, msg: Any, env_id: int, arrived: float = 0.0) -> InferRequest:
        """A decoded frame -> a validated ``InferRequest`` (raises RequestError)."""
        if not isinstance(msg, dict | Mapping):
            raise RequestError(
                "RequestError",
                f"expected a msgpack map (an observation dict), got {type(msg).__name__}",
            )
        obs = self.observation(msg)
        if "prev_action" not in msg or msg["prev_action"] is None:
            return InferRequest(env_id, obs, None, DEFAULT_EXECUTOR, arrived)
        executor, guidance = parse_guidance(msg, self.action_shape, self)
        return InferRequest(env_id, obs, guidance, executor, arrived)


def parse_observation(
    msg: Mapping[str, Any], features: Mapping[str, FeatureSpec]
) -> dict[str, np.ndarray]:
    """The declared features of ``msg``, each checked against its spec (shape without batch)."""
    return RequestParser(features, (0, 0)).observation(msg)


def _count(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise RequestError("RequestError", f"{name}: expected an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise RequestError(
            "RequestError", f"{name}: expected {low} <= {name} <= {high}, got {value}"
        )
    return int(value)


_KNOWN_OPTIONS = sorted({*_RTC_OPTIONS, "max_guidance_weight", "executor"})
_KNOWN_SET = frozenset(_KNOWN_OPTIONS)


def _rtc_options(msg: Mapping[str, Any], parser: RequestParser | None = None) -> Mapping[str, Any]:
    opts = msg.get("rtc") or {}
    if not isinstance(opts, Mapping):
        raise RequestError("RequestError", f"rtc: expected a dict of options, got {opts!r}")
    if not opts.keys() <= _KNOWN_SET:
        unknown = sorted(set(map(str, opts)) - _KNOWN_SET)
        raise RequestError(
            "RequestError", f"rtc: unknown options {unknown}; expected {_KNOWN_OPTIONS}"
        )
    for name, allowed in _RTC_OPTIONS.items():
        if name in opts and opts[name] not in allowed:
            raise RequestError(
                "RequestError",
                f"rtc[{name!r}]: expected one of {list(allowed)}, got {opts[name]!r}",
            )
    executor = opts.get("executor", DEFAULT_EXECUTOR)
    if parser is None:
        known_name = executor in EXECUTORS.names()
    else:
        known_name = parser.known_executor(executor)
    if not known_name:
        known = EXECUTORS.names() if parser is None else parser.executor_names()
        raise RequestError(
            "RequestError", f"rtc['executor']: expected one of {known}, got {executor!r}"
        )
    beta = opts.get("max_guidance_weight")
    if beta is not None and (
        isinstance(beta, bool)
        or not isinstance(beta, int | float)
        or not 0 <= beta <= MAX_GUIDANCE_WEIGHT
    ):
        raise RequestError(
            "RequestError",
            f"rtc['max_guidance_weight']: expected a number in [0, {MAX_GUIDANCE_WEIGHT:g}], "
            f"got {beta!r}",
        )
    return opts


def parse_guidance(
    msg: Mapping[str, Any], action_shape: tuple[int, int], parser: RequestParser | None = None
) -> tuple[str, GuidanceRequest | None]:
    """The executor name and the one-env guidance request of a frame (None: a plain request,
    no ``prev_action``, an empty one, or an executor that does not condition). ``parser``
    gives the executor names (default: ``EXECUTORS.names()`` read now)."""
    prev = msg.get("prev_action")
    if prev is None:
        return DEFAULT_EXECUTOR, None
    horizon, adim = action_shape
    arr = _as_array("prev_action", prev)
    if arr.ndim != 2 or arr.shape[1] != adim or arr.shape[0] > horizon:
        raise RequestError(
            "RequestError", f"prev_action: expected shape (L<={horizon}, {adim}), got {arr.shape}"
        )
    _check_numeric("prev_action", arr, "float32")
    delay = msg.get("est_delay")
    d = 0 if delay is None else _count("est_delay", delay, 0, horizon)
    executed = msg.get("executed")
    s = None if executed is None else _count("executed", executed, 0, horizon)
    opts = _rtc_options(msg, parser)
    name = str(opts.get("executor", DEFAULT_EXECUTOR))
    cls = EXECUTORS.get(name)
    method = opts.get("method", cls.method)
    if arr.shape[0] == 0 or method is None:  # nothing to continue, or a plain executor
        return name, None
    beta = opts.get("max_guidance_weight")
    request = GuidanceRequest.build(
        [arr], [d], horizon=horizon, executed=s, schedule=opts.get("schedule", DEFAULT_SCHEDULE),
        jacobian=opts.get("jacobian", cls.jacobian), method=method,
        **({} if beta is None else {"beta": float(beta)}),
    )  # fmt: skip
    return name, request


def parse_request(
    msg: Any,
    env_id: int,
    features: Mapping[str, FeatureSpec],
    action_shape: tuple[int, int],
    arrived: float = 0.0,
) -> InferRequest:
    """A decoded frame -> a validated ``InferRequest`` (raises RequestError with the reason)."""
    return RequestParser(features, action_shape).request(msg, env_id, arrived)
