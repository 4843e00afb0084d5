"""ACT-style chunk regression: an observation encoder and a transformer of learned queries.

Components:

- ``encoder``: observation features -> ``cond`` (an ``mlp`` over the concatenated, flattened
  features by default; an ``observation_encoder`` for cameras: a conv encoder per camera);
- ``decoder``: ``chunk_transformer``, ``horizon`` learned queries cross-attending to tokens made
  from ``cond`` -> ``(B, H, A)``.

Deterministic, trained with an L1 loss (ACT's choice) that ignores padded steps. The CVAE latent of
ACT (Zhao et al. 2023) is left out: at inference ACT decodes from the prior mean ``z = 0``, so the
acting path is exactly this deterministic decoder; the latent only helps training on multimodal
human demonstrations, at the cost of a second transformer over the action sequence and a KL
weight to tune. Temporal ensembling is an executor (``envactor.runtime.executors``), not part of
the policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from pydantic import Field
from torch import nn

from envactor.normalize import Normalizer
from envactor.policy.base import EnvIds, Policy
from envactor.policy.features import (
    check_encoder_head,
    encode_observation,
    gaussian_explore,
    reads_observation_dict,
)
from envactor.policy.specs import PolicyParams
from envactor.registry import POLICY_REGISTRY


class ACTParams(PolicyParams):
    """``explore_std``: Gaussian noise (normalized action units) added in collect mode."""

    explore_std: float = Field(default=0.1, ge=0)


@POLICY_REGISTRY.register("act")
class ACTPolicy(Policy):
    """Deterministic ACT: encoder -> chunk transformer, masked L1 loss."""

    Params = ACTParams
    required_components = ("encoder", "decoder")

    def __init__(
        self,
        components: Mapping[str, nn.Module] | None = None,
        normalizer: Normalizer | None = None,
        **params: Any,
    ) -> None:
        super().__init__(components, normalizer, **params)
        check_encoder_head(self, "decoder")
        self._reads_dict = reads_observation_dict(self.components["encoder"])

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor:
        encoder = self.components["encoder"]
        cond = encode_observation(encoder, obs, list(self.input_features), self._reads_dict)
        chunk: torch.Tensor = self.components["decoder"](cond)
        return chunk

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        err = (self._chunk(batch, []) - batch["action"]).abs().mean(-1)  # (B, H)
        pad = batch.get("action_is_pad")
        if pad is not None:
            keep = (~pad.bool()).to(err.dtype)
            return {"loss": (err * keep).sum() / keep.sum().clamp_min(1.0)}
        return {"loss": err.mean()}

    def _explore(self, chunk: torch.Tensor, env_ids: EnvIds) -> torch.Tensor:
        std = cast(ACTParams, self.params).explore_std
        return gaussian_explore(self, chunk, env_ids, std)
