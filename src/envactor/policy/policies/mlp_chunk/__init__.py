"""MLP that regresses a whole action chunk from the observation: the simplest baseline."""

from __future__ import annotations

import torch
from pydantic import Field

from envactor.policy.base import EnvIds, Policy
from envactor.policy.features import check_dims, feature_size, flat_observation, gaussian_explore
from envactor.policy.specs import PolicyParams
from envactor.registry import POLICY_REGISTRY


class MLPChunkParams(PolicyParams):
    """``explore_std``: Gaussian noise (normalized action units) added in collect mode."""

    explore_std: float = Field(default=0.1, ge=0)


@POLICY_REGISTRY.register("mlp_chunk")
class MLPChunkPolicy(Policy):
    """MLP regression of a (H, A) chunk with an MSE loss that ignores padded steps."""

    Params = MLPChunkParams
    required_components = ("net",)

    def __init__(self, components=None, normalizer=None, **params) -> None:  # type: ignore[no-untyped-def]
        super().__init__(components, normalizer, **params)
        h, a = self.action_shape
        check_dims(self, "net", {
            "in_dim": (feature_size(self), "sum of input_features sizes"),
            "out_dim": (h * a, "policy.params.horizon * policy.params.action_dim"),
        })  # fmt: skip

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
        return gaussian_explore(self, chunk, env_ids, self.params.explore_std)  # type: ignore[attr-defined]
