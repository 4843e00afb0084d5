"""One guidance request: how a new chunk must continue what each env is still executing.

A :class:`GuidanceRequest` carries, per env of a batch, the unexecuted remainder of its current
chunk (index 0 = the next action to run), the inference delay d and the execution horizon s,
and for the whole batch the settings: the soft-mask ``schedule``, the guidance weight ``beta``
(``max_guidance_weight`` on the wire), the ``jacobian`` of guided sampling and the ``method``:

- ``"guided"``: the policy's guided sampling (true real-time chunking, ``_guided_chunk``) when it
  has one, else the post-hoc blend (``"auto"`` is accepted as another name for it);
- ``"prefix"``: training-time RTC, the d committed actions written in (``_prefix_chunk``);
- ``"blend"``: the post-hoc blend ``prefix * W + pred * (1 - W)`` whatever the policy.

Every producer (the executors, the real-time controller, the server's request parser, the
client) builds one and every consumer (the policy hooks, the remote policy, the wire format)
takes one; the padded prefix ``Y``, the mask ``W`` and the committed mask are computed from it
on demand. The defaults live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, cast

import numpy as np
import torch

from envactor.chunking.guidance import DEFAULT_MAX_GUIDANCE_WEIGHT, MAX_GUIDANCE_WEIGHT, Jacobian
from envactor.chunking.masks import SCHEDULES, Schedule, _weights_cached

__all__ = [
    "DEFAULT_JACOBIAN",
    "DEFAULT_MAX_GUIDANCE_WEIGHT",
    "DEFAULT_METHOD",
    "DEFAULT_SCHEDULE",
    "JACOBIANS",
    "METHODS",
    "GuidanceMethod",
    "GuidanceRequest",
]

GuidanceMethod = Literal["guided", "prefix", "blend"]
METHODS: tuple[str, ...] = ("guided", "prefix", "blend")
METHOD_ALIASES = {"auto": "guided"}
"""Older names of methods, accepted wherever a method is read."""
JACOBIANS: tuple[str, ...] = ("vjp", "identity")
DEFAULT_SCHEDULE: Schedule = "exp"
DEFAULT_JACOBIAN: Jacobian = "vjp"
DEFAULT_METHOD: GuidanceMethod = "guided"


def _count(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"GuidanceRequest: {name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low} <= {name}" + ("" if high is None else f" <= {high}")
        raise ValueError(f"GuidanceRequest: expected {bound}, got {value}")
    return int(value)


def _per_env(name: str, value: object, batch: int) -> list[object]:
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str):
        items = list(value)
        if len(items) != batch:
            raise ValueError(f"GuidanceRequest: got {len(items)} {name} values for {batch} envs")
        return items
    return [value] * batch


def method_name(method: str) -> GuidanceMethod:
    """``method`` checked (``"auto"`` read as ``"guided"``)."""
    name = METHOD_ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)} (or 'auto'), got {method!r}")
    return cast(GuidanceMethod, name)


@dataclass(frozen=True, eq=False)
class GuidanceRequest:
    """Per env b of a batch: ``remainder[b]`` (L_b, A), ``delay[b]`` (d) and ``executed[b]`` (s);
    for the batch: ``schedule``, ``beta``, ``jacobian`` and ``method`` (module docstring).

    Build one with :meth:`build`, which accepts one value for all envs or one per env, and
    resolves s to ``H - L_b`` when it is not given. Equal :attr:`settings` may share one forward
    pass (:meth:`concat`); :meth:`rows` picks envs out.
    """

    horizon: int
    remainder: tuple[np.ndarray, ...]
    delay: tuple[int, ...]
    executed: tuple[int, ...]
    schedule: Schedule = DEFAULT_SCHEDULE
    beta: float = DEFAULT_MAX_GUIDANCE_WEIGHT
    jacobian: Jacobian = DEFAULT_JACOBIAN
    method: GuidanceMethod = DEFAULT_METHOD

    def __post_init__(self) -> None:
        horizon = _count("horizon (H)", self.horizon, 1)
        rows = tuple(self.remainder)
        batch = len(rows)
        if len(self.delay) != batch or len(self.executed) != batch:
            raise ValueError(
                f"GuidanceRequest: {batch} remainders, {len(self.delay)} delays and "
                f"{len(self.executed)} executed counts; expected one of each per env"
            )
        dims = {r.shape[1] for r in rows if r.ndim == 2}
        for b, r in enumerate(rows):
            if r.ndim != 2 or r.shape[0] > horizon or len(dims) > 1:
                raise ValueError(
                    f"GuidanceRequest: remainder[{b}]: expected shape (L<={horizon}, A) with "
                    f"the same A for every env, got {r.shape} (A seen: {sorted(dims)})"
                )
        delay = tuple(  # plain ints pass at the cost of a type check (the executors' hot path)
            d if type(d) is int and d >= 0 else _count("delay (d)", d, 0) for d in self.delay
        )
        executed = tuple(
            s if type(s) is int and 0 <= s <= horizon else _count("executed (s)", s, 0, horizon)
            for s in self.executed
        )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"GuidanceRequest: schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}"
            )
        beta = self.beta
        if isinstance(beta, bool) or not isinstance(beta, int | float | np.floating):
            raise TypeError(f"GuidanceRequest: beta must be a number, got {beta!r}")
        if not (0 <= beta <= MAX_GUIDANCE_WEIGHT):
            raise ValueError(
                f"GuidanceRequest: beta must be finite and in [0, {MAX_GUIDANCE_WEIGHT:g}], "
                f"got {beta}"
            )
        if self.jacobian not in JACOBIANS:
            raise ValueError(
                f"GuidanceRequest: jacobian must be one of {list(JACOBIANS)}, got {self.jacobian!r}"
            )
        object.__setattr__(self, "method", method_name(self.method))
        object.__setattr__(self, "beta", float(beta))
        object.__setattr__(self, "remainder", rows)
        object.__setattr__(self, "delay", delay)
        object.__setattr__(self, "executed", executed)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        remainder: np.ndarray | Sequence[Any],
        delay: int | Sequence[int] = 0,
        *,
        horizon: int,
        executed: int | Sequence[int | None] | None = None,
        schedule: str = DEFAULT_SCHEDULE,
        beta: float = DEFAULT_MAX_GUIDANCE_WEIGHT,
        jacobian: str = DEFAULT_JACOBIAN,
        method: str = DEFAULT_METHOD,
    ) -> GuidanceRequest:
        """A request from each env's remainder (``(B, L, A)`` or B arrays ``(L_b, A)``) and d
        (one for all or per env); ``executed`` s (one, per env, or None: ``H - L_b``)."""
        rows = [np.asarray(r, dtype=np.float32) for r in remainder]
        batch = len(rows)
        delays = _per_env("delay", delay, batch)
        given = _per_env("executed", executed, batch)
        s = [horizon - len(r) if g is None else g for r, g in zip(rows, given)]
        return cls(
            horizon, tuple(rows), tuple(delays), tuple(s), cast(Schedule, schedule), beta,  # type: ignore[arg-type]
            cast(Jacobian, jacobian), method_name(method),
        )  # fmt: skip

    def replace(self, **changes: Any) -> GuidanceRequest:
        """A copy with ``changes`` (dataclass fields) applied, checked again."""
        return dataclasses.replace(self, **changes)

    def rows(self, index: Iterable[int]) -> GuidanceRequest:
        """The request of the envs at positions ``index`` (same settings)."""
        idx = list(index)
        return self.replace(
            remainder=tuple(self.remainder[i] for i in idx),
            delay=tuple(self.delay[i] for i in idx),
            executed=tuple(self.executed[i] for i in idx),
        )

    @classmethod
    def concat(cls, requests: Sequence[GuidanceRequest]) -> GuidanceRequest:
        """One request for the envs of ``requests`` in order (equal horizon and settings)."""
        first = requests[0]
        for r in requests[1:]:
            if r.horizon != first.horizon or r.settings != first.settings:
                raise ValueError(
                    f"GuidanceRequest.concat: requests differ in horizon or settings: "
                    f"{(first.horizon, first.settings)} vs {(r.horizon, r.settings)}"
                )
        return first.replace(
            remainder=tuple(a for r in requests for a in r.remainder),
            delay=tuple(d for r in requests for d in r.delay),
            executed=tuple(s for r in requests for s in r.executed),
        )

    # ------------------------------------------------------------------ reading
    @property
    def batch_size(self) -> int:
        """B, the number of envs."""
        return len(self.remainder)

    @property
    def settings(self) -> tuple[str, float, str, str]:
        """``(schedule, beta, jacobian, method)``: what requests must share to share a batch."""
        return (self.schedule, self.beta, self.jacobian, self.method)

    @property
    def is_empty(self) -> bool:
        """True when no env has a remainder to continue (a plain request)."""
        return all(len(r) == 0 for r in self.remainder)

    @cached_property
    def prefix(self) -> np.ndarray:
        """``Y`` (B, H, A) float32: each remainder shifted to index 0 and padded with its last
        action (zeros for an empty one), in the remainder's units."""
        adim = self.remainder[0].shape[1] if self.remainder else 0
        out = np.zeros((self.batch_size, self.horizon, adim), dtype=np.float32)
        for b, row in enumerate(self.remainder):
            n = len(row)
            out[b, :n] = row
            if n:
                out[b, n:] = row[-1]
        return out

    @cached_property
    def weights(self) -> np.ndarray:
        """``W`` (B, H) float32: the soft mask (docs/chunking.md) with d clamped to L_b and zero
        wherever the remainder has no action."""
        h = self.horizon
        out = np.zeros((self.batch_size, h), dtype=np.float32)
        for b, row in enumerate(self.remainder):
            n = len(row)  # d, s checked at construction: prefix_weights' values without its checks
            out[b] = _weights_cached(min(self.delay[b], n), min(self.executed[b], h), h,
                                     self.schedule)  # fmt: skip
            out[b, n:] = 0.0
        return out

    @cached_property
    def committed(self) -> np.ndarray:
        """(B, H) bool, True at ``i < min(d_b, L_b)``: the actions that run anyway while the new
        chunk is computed (training-time RTC writes them in)."""
        i = np.arange(self.horizon)[None, :]
        lim = np.array([min(d, len(r)) for d, r in zip(self.delay, self.remainder)])
        return i < lim.reshape(-1, 1)

    def weights_like(self, like: torch.Tensor) -> torch.Tensor:
        """:attr:`weights` as a float32 tensor on ``like``'s device."""
        return torch.from_numpy(self.weights).to(like.device)

    def committed_like(self, like: torch.Tensor) -> torch.Tensor:
        """:attr:`committed` as a bool tensor on ``like``'s device."""
        return torch.from_numpy(self.committed).to(like.device)
