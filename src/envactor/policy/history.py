"""Per-environment observation history (LeRobot's ``n_obs_steps``): the last n observations.

A policy with ``n_obs_steps = n > 1`` sees ``(B, n, ...)`` tensors in ``_chunk``, oldest first.
Every acting call that carries an env's observation (``predict``, ``guided_inference``,
``select_action``, ``observe``) appends it to that env's history; the first observation after a
reset fills all n slots (as LeRobot's ``populate_queues`` does), so an episode's first chunk sees
its first frame n times.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence

import torch

Frame = dict[str, torch.Tensor]


class ObsHistory:
    """The last ``n`` (normalized) observations of each env id; ``reset(env_ids)`` forgets only
    those envs. Rows are copied when recorded, so callers may reuse their buffers."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {n}")
        self.n = int(n)
        self._frames: dict[Hashable, deque[Frame]] = {}

    def __contains__(self, env_id: object) -> bool:
        return env_id in self._frames

    def push(self, env_ids: Sequence[Hashable], obs: Mapping[str, torch.Tensor]) -> None:
        """Append row ``b`` of every key of ``obs`` (``(B, ...)``) to env ``env_ids[b]``'s
        history; an env without history gets that row in all n slots."""
        for b, env in enumerate(env_ids):
            row = {k: v[b].clone() for k, v in obs.items()}
            frames = self._frames.get(env)
            if frames is None:
                self._frames[env] = deque([row] * self.n, maxlen=self.n)
            else:
                frames.append(row)

    def stack(self, env_ids: Sequence[Hashable]) -> dict[str, torch.Tensor]:
        """``{key: (B, n, ...)}`` for ``env_ids`` (oldest first); every env needs a history."""
        missing = [e for e in env_ids if e not in self._frames]
        if missing:
            raise KeyError(f"env ids {missing} have no observation history (observe them first)")
        if not env_ids:
            return {}
        histories = [self._frames[e] for e in env_ids]
        keys = list(histories[0][0])
        return {
            k: torch.stack([torch.stack([frame[k] for frame in h]) for h in histories])
            for k in keys
        }

    def reset(self, env_ids: Iterable[Hashable] | None = None) -> None:
        """Forget the history of ``env_ids`` (all envs when None)."""
        if env_ids is None:
            self._frames.clear()
            return
        for e in env_ids:
            self._frames.pop(e, None)
