"""``guided_inference``'s keyword and seed-system call shapes, read into one GuidanceRequest.

The seed system called ``guided_inference(input_data, normalizer, min_num_actions_executed,
action_chunk_size)`` with the previous chunk's remainder and the delay inside the observation
dict (``prev_action``, ``est_delay``, the server's field names); envactor's keywords are
``prev_chunk=``/``delay=`` or a whole ``request=``. Each shape is read the same way; mixing them
is an error that names the keywords, never a silent choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from envactor.chunking.guidance import DEFAULT_MAX_GUIDANCE_WEIGHT
from envactor.chunking.request import (
    DEFAULT_JACOBIAN,
    DEFAULT_METHOD,
    DEFAULT_SCHEDULE,
    GuidanceRequest,
)

SEED_KEYS = ("prev_action", "est_delay")
"""Keys of the seed system's call shape inside the observation dict."""


def _per_env(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.ndim >= 1:
        return [int(x) for x in value.reshape(-1)]
    return value


def guidance_from_call(
    obs: Mapping[str, Any],
    horizon: int,
    request: GuidanceRequest | None,
    prev_chunk: np.ndarray | Sequence[np.ndarray] | None,
    delay: int | Sequence[int],
    executed: int | None,
    method: str | None,
    schedule: str | None,
    beta: float | None,
    jacobian: str | None,
) -> GuidanceRequest | None:
    """The request of one ``guided_inference`` call; None when it carries no remainder."""
    fields = {
        "prev_chunk": prev_chunk, "min_num_actions_executed": executed, "method": method,
        "schedule": schedule, "max_guidance_weight": beta, "jacobian": jacobian,
    }  # fmt: skip
    delay_given = not (isinstance(delay, int | np.integer) and int(delay) == 0)
    given = [k for k, v in fields.items() if v is not None] + (["delay"] if delay_given else [])
    seed = [k for k in SEED_KEYS if k in obs]
    if request is not None:
        if given or seed:
            raise TypeError(
                f"guided_inference: give request= or its fields, not both; also got "
                f"{given + [f'obs[{k!r}]' for k in seed]}"
            )
        return request
    if seed:
        if prev_chunk is not None or delay_given:
            raise TypeError(
                f"guided_inference: the observation carries {seed} (the seed system's call "
                f"shape) and prev_chunk=/delay= were given too; pass the remainder one way"
            )
        if "prev_action" not in obs:
            raise TypeError(
                "guided_inference: obs['est_delay'] without obs['prev_action']; the remainder "
                "goes in prev_action (or prev_chunk=)"
            )
        prev = obs["prev_action"]
        prev_chunk = [prev] if isinstance(prev, np.ndarray) and prev.ndim == 2 else prev
        delay = _per_env(obs.get("est_delay", 0))
    if prev_chunk is None:
        return None
    return GuidanceRequest.build(
        prev_chunk, delay, horizon=horizon, executed=executed,
        schedule=schedule or DEFAULT_SCHEDULE,
        beta=DEFAULT_MAX_GUIDANCE_WEIGHT if beta is None else beta,
        jacobian=jacobian or DEFAULT_JACOBIAN, method=method or DEFAULT_METHOD,
    )  # fmt: skip
