"""DI-engine-style views of one policy: ``learn_mode``, ``collect_mode``, ``eval_mode``.

Each view has ``init``, ``reset``, ``forward``, ``state_dict`` and ``load_state_dict``. The acting
views take ``{env_id: obs}`` (one unbatched observation per env) and return ``{env_id: action}``,
executing chunks per env (H predicted, s executed, per-env queues); env ids are any hashable keys.
Each acting view owns its state: its queues and observation histories, and the policy's per-env
state, since the hooks see a view's env ``e`` as ``ModeEnv(view, e)`` (its noise too: a copy of
env ``e``'s seeded stream). Resetting env 0 of ``collect_mode`` leaves env 0 of ``eval_mode``
(and of the policy's own ``select_action``) as it was; ``Policy.reset()`` clears every view.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from envactor.policy.history import ObsHistory
from envactor.policy.queues import ChunkQueues

if TYPE_CHECKING:
    from envactor.policy.base import EnvIds, Policy


@dataclass(frozen=True)
class ModeEnv:
    """The env id a hook sees for env ``env`` of the acting view ``mode`` (``"eval"`` or
    ``"collect"``), so per-env state kept by a policy is per view."""

    mode: str
    env: Hashable


MODE_SCOPES = ("eval", "collect")


def stack_observations(
    obs_by_env: Mapping[Hashable, Mapping[str, Any]], keys: list[str]
) -> tuple[list[Hashable], dict[str, np.ndarray]]:
    """``{env_id: obs}`` -> (env ids in order, batched ``{key: (B, ...)}``)."""
    ids = list(obs_by_env)
    batch: dict[str, np.ndarray] = {}
    for key in keys:
        try:
            batch[key] = np.stack([np.asarray(obs_by_env[e][key]) for e in ids])
        except KeyError:
            bad = [e for e in ids if key not in obs_by_env[e]]
            raise KeyError(f"observation of env {bad[0]!r} is missing key {key!r}") from None
        except ValueError as exc:
            shapes = {e: np.shape(obs_by_env[e][key]) for e in ids}
            raise ValueError(f"observations disagree on the shape of {key!r}: {shapes}") from exc
    return ids, batch


class _ActingMode:
    explore = False
    scope: ClassVar[str] = "eval"

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._queues = ChunkQueues()
        self._history = ObsHistory(policy.n_obs_steps)
        self._seen: set[Hashable] = set()

    def init(self) -> None:
        """Put the policy in acting state and forget pending actions and histories."""
        self._policy.eval()
        self._clear()

    def _clear(self, env_ids: EnvIds | None = None) -> None:
        """Forget this view's pending actions and histories of ``env_ids`` (all when None)."""
        self._queues.reset(env_ids)
        self._history.reset(env_ids)
        if env_ids is None:
            self._seen.clear()

    def reset(self, env_ids: EnvIds | None = None) -> None:
        """Clear this view's pending actions, histories and per-env policy state of ``env_ids``
        (all its envs when None); other views and the policy's own state are untouched."""
        ids = list(self._seen if env_ids is None else env_ids)
        self._clear(env_ids)
        if ids:
            self._policy._reset([ModeEnv(self.scope, e) for e in ids])

    def forward(self, obs: Mapping[Hashable, Mapping[str, Any]]) -> dict[Hashable, np.ndarray]:
        """``{env_id: obs}`` -> ``{env_id: action}``; envs replan independently."""
        if not obs:
            return {}
        ids, batch = stack_observations(obs, list(self._policy.input_features))
        self._seen.update(ids)
        actions = self._policy._act_from_queues(
            batch, ids, self._queues, self.explore, self._history, self.scope
        )
        return dict(zip(ids, actions))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Acting weights as ``<component>.<tensor>`` CPU tensors."""
        per = self._policy.acting_state_dict()
        return {f"{c}.{k}": v for c, sd in per.items() for k, v in sd.items()}

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], version: int | None = None
    ) -> None:
        """Load weights in place (and the weight version when given); pending chunks dropped."""
        self._policy.load_weights(state_dict, version=version)
        self._queues.reset()


class EvalMode(_ActingMode):
    """Deterministic acting."""

    scope = "eval"


class CollectMode(_ActingMode):
    """Acting with the policy's exploration (``_explore``)."""

    explore = True
    scope = "collect"


class LearnMode:
    """Training view: ``forward(batch)`` = loss, backward, clipped AdamW step, EMA update."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self.optimizer: torch.optim.Optimizer | None = None
        self.grad_clip: float | None = None
        self.step = 0

    def init(
        self,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        grad_clip: float | None = 1.0,
    ) -> None:
        """Set the optimizer (AdamW over trainable parameters by default) and train()."""
        params = [p for p in self._policy.parameters() if p.requires_grad]
        self.optimizer = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.grad_clip = grad_clip
        self._policy.train()

    def reset(self, env_ids: EnvIds | None = None) -> None:
        """Learn mode keeps no per-env state; present for protocol symmetry."""

    def forward(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimization step on ``batch``; returns the losses and the gradient norm."""
        if self.optimizer is None:
            self.init()
        assert self.optimizer is not None
        out = self._policy.forward(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = self.grad_clip if self.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.optimizer.step()
        self._policy.update()
        self.step += 1
        stats = {k: float(v.detach()) for k, v in out.items() if v.numel() == 1}
        stats["grad_norm"] = float(grad_norm)
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Training weights, optimizer state and step (for resuming)."""
        self._policy._learning()
        return {
            "model": {k: v.detach().cpu() for k, v in self._policy.components.state_dict().items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "step": self.step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self._policy.load_weights(state["model"])
        if state.get("optimizer") is not None:
            if self.optimizer is None:
                self.init()
            assert self.optimizer is not None
            self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state.get("step", 0))
