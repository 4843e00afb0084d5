"""MLP that regresses a whole action chunk from the observation: the simplest baseline."""

from __future__ import annotations

import torch
from pydantic import Field

from envactor.policy.base import EnvIds, Policy
from envactor.policy.specs import PolicyParams
from envactor.registry import POLICY_REGISTRY


class MLPChunkParams(PolicyParams):
    """``explore_std``: Gaussian noise (normalized action units) added in collect mode."""

    explore_std: float = Field(default=0.1, ge=0)


def flat_observation(obs: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """Concatenate the flattened observation features in declared order: (B, sum of sizes)."""
    if len(keys) == 1:
        return obs[keys[0]].flatten(1).float()
    return torch.cat([obs[k].flatten(1).float() for k in keys], dim=1)


@POLICY_REGISTRY.register("mlp_chunk")
class MLPChunkPolicy(Policy):
    """MLP regression of a (H, A) chunk with an MSE loss that ignores padded steps."""

    Params = MLPChunkParams
    required_components = ("net",)

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor:
        x = flat_observation(obs, list(self.input_features))
        return self.components["net"](x).view(x.shape[0], *self.action_shape)

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred = self._chunk(batch, [])
        err = (pred - batch["action"]).pow(2).mean(-1)
        pad = batch.get("action_is_pad")
        if pad is not None:
            keep = (~pad.bool()).float()
            return {"loss": (err * keep).sum() / keep.sum().clamp_min(1.0)}
        return {"loss": err.mean()}

    def _explore(self, chunk: torch.Tensor, env_ids: EnvIds) -> torch.Tensor:
        std = self.params.explore_std  # type: ignore[attr-defined]
        if std <= 0:
            return chunk
        return chunk + std * self._randn(env_ids, *self.action_shape)
