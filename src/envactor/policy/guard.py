"""The guard on guided chunks: no non-finite or exploding chunk leaves a policy's guided sampling.

Guided sampling (``_guided_chunk``: RTC's guidance term at every Euler step) can diverge: with a
large guidance weight and a mask that ties many actions, each step overshoots the prefix by
more than the last, and the chunk grows without bound (measured on the demo's checkpoint:
beta = 100 with the ``ones`` schedule gave actions of 1e9). The acting boundary therefore checks
every guided chunk, row by row, against the action range of the checkpoint's own stats:

    bounds = [min - GUIDED_RANGE_MARGIN (max - min), max + GUIDED_RANGE_MARGIN (max - min)]

(the dataset's action min and max, per action dim, in the normalized space the hooks see: for
``min_max`` that is [-2, 2]). A row with a non-finite value or a value outside the bounds is
replaced by the policy's plain sample (``_chunk``) for that env, clamped to the bounds; a plain
sample that is itself non-finite is a :class:`~envactor.policy.acting.PolicyError`. Without
action min/max stats only finiteness is checked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch

from envactor.normalize import Normalizer

__all__ = [
    "GUIDED_RANGE_MARGIN", "action_bounds", "check_finite", "guard_guided", "rows_out_of_bounds",
]  # fmt: skip

Bounds = tuple[torch.Tensor, torch.Tensor]

GUIDED_RANGE_MARGIN = 0.5
"""How far past the data's action range a guided chunk may go, as a fraction of the range's
width (the demo's trained flow policy samples up to 0.4 past it without guidance)."""


def action_bounds(
    norm: Normalizer, key: str, device: torch.device, dtype: torch.dtype
) -> Bounds | None:
    """``(lo, hi)``, each ``(A,)``, in normalized units: the stats' action range widened by
    :data:`GUIDED_RANGE_MARGIN` on each side; None when ``key`` has no min/max stats."""
    if key not in norm:
        return None
    stats = norm.stats.get(key, {})
    if "min" not in stats or "max" not in stats:
        return None
    lo = np.asarray(norm.normalize(key, stats["min"].astype(np.float64)), np.float64)
    hi = np.asarray(norm.normalize(key, stats["max"].astype(np.float64)), np.float64)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    pad = GUIDED_RANGE_MARGIN * (hi - lo)
    return (
        torch.as_tensor(lo - pad, dtype=dtype, device=device).reshape(-1),
        torch.as_tensor(hi + pad, dtype=dtype, device=device).reshape(-1),
    )


def rows_out_of_bounds(chunk: torch.Tensor, bounds: Bounds | None) -> torch.Tensor:
    """``(B,)`` bool: rows of ``chunk`` ``(B, H, A)`` with a non-finite value or one outside
    ``bounds``."""
    bad = ~torch.isfinite(chunk)
    if bounds is not None:
        lo, hi = bounds
        bad = bad | (chunk < lo) | (chunk > hi)
    return bad.flatten(1).any(dim=1)


def guard_guided(
    chunk: torch.Tensor,
    bounds: Bounds | None,
    plain: Callable[[list[int]], torch.Tensor],
    policy_name: str,
    env_ids: Sequence[Hashable],
) -> tuple[torch.Tensor, list[int]]:
    """``chunk`` (B, H, A) with its bad rows (:func:`rows_out_of_bounds`) replaced by
    ``plain(rows)`` clamped to ``bounds``; returns it and the rows replaced (with a
    ``RuntimeWarning``). Raises ``PolicyError`` naming the envs when a plain sample is not
    finite either."""
    from envactor.policy.acting import PolicyError

    bad = rows_out_of_bounds(chunk, bounds)
    if not bool(bad.any()):
        return chunk, []
    rows = bad.nonzero().flatten().tolist()
    envs = [env_ids[i] for i in rows]
    sub = plain(rows)
    if not bool(torch.isfinite(sub).all()):
        raise PolicyError(
            f"policy {policy_name!r}: guided sampling and the plain sample both returned "
            f"non-finite actions for env(s) {envs}; expected finite actions"
        )
    if bounds is not None:
        sub = torch.clamp(sub, bounds[0], bounds[1])
    chunk = chunk.clone()
    chunk[rows] = sub.to(chunk.dtype)
    warnings.warn(  # one text, so Python's filter shows it once, not once per env set
        f"policy {policy_name!r}: a guided chunk left the action range of the stats or was not "
        "finite; that env runs the plain sample instead (policy.guidance_fallbacks counts them)",
        RuntimeWarning,
        stacklevel=5,  # the caller of guided_inference
    )
    return chunk, rows


def check_finite(
    chunk: torch.Tensor, policy_name: str, hook: str, env_ids: Sequence[Hashable]
) -> None:
    """Raise ``PolicyError`` naming the envs whose rows of ``chunk`` are not finite."""
    bad = ~torch.isfinite(chunk).flatten(1).all(dim=1)
    if bool(bad.any()):
        from envactor.policy.acting import PolicyError

        envs = [env_ids[i] for i in bad.nonzero().flatten().tolist()]
        raise PolicyError(
            f"policy {policy_name!r}: {hook} returned non-finite actions for env(s) {envs}; "
            "expected finite actions"
        )
