"""``demo_flow``: flow matching over action chunks, with training-time RTC.

Flow time tau runs from 0 (noise) to 1 (data): ``x_tau = tau x1 + (1 - tau) x0`` and the network
regresses the velocity ``x1 - x0``. Each action of a chunk carries its own flow time, so a
committed prefix can be given clean (time 1): that is training-time RTC (``_prefix_chunk``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast

import torch
from pydantic import Field

from envactor import GuidanceRequest, Normalizer, Policy, PolicyParams
from envactor.chunking import euler_sample, rtc_sample

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


class DemoFlowParams(PolicyParams):
    """``policy.params``: every PolicyParams field plus these (validated like them)."""

    num_steps: int = Field(default=4, ge=1)
    explore_std: float = Field(default=0.1, ge=0.0)
    prefix_max_delay: int = Field(default=3, ge=0)


class DemoFlow(Policy):
    """Flow-matching chunk policy with training-time RTC (a third-party example)."""

    Params = DemoFlowParams
    required_components = ("encoder", "velocity")

    def __init__(
        self,
        components: dict[str, torch.nn.Module] | None = None,
        normalizer: Normalizer | None = None,
        **params: Any,
    ) -> None:
        super().__init__(components, normalizer, **params)
        self.updates = 0  # counted by _update

    @property
    def _flow(self) -> DemoFlowParams:
        return cast(DemoFlowParams, self.params)

    # ------------------------------------------------------------------ helpers
    def _cond(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every observation feature, flattened and concatenated, through the encoder."""
        flat = [obs[k].flatten(1) for k in self.input_features]  # (B, ...) or (B, n, ...)
        return self.components["encoder"](torch.cat(flat, dim=1))

    def _velocity(self, cond: torch.Tensor, committed: torch.Tensor | None = None) -> Velocity:
        """``v(x, tau)`` as rtc_sample wants it; ``committed`` (B, H) actions are at time 1."""
        net = self.components["velocity"]

        def v(x: torch.Tensor, tau: float) -> torch.Tensor:
            token_tau = torch.full(x.shape[:2], tau, dtype=x.dtype, device=x.device)
            if committed is not None:
                token_tau = torch.where(committed, 1.0, token_tau)
            return net(x, token_tau, cond)

        return v

    def _noise(self, env_ids: Sequence[Hashable]) -> torch.Tensor:
        return self._randn(env_ids, *self.action_shape)  # per-env seeded streams

    # ------------------------------------------------------------------ hooks
    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Sequence[Hashable]) -> torch.Tensor:
        v = self._velocity(self._cond(obs))
        return euler_sample(v, self._noise(env_ids), num_steps=self._flow.num_steps)

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x1 = batch["action"]  # (B, H, A), normalized
        b, h, _ = x1.shape
        x0 = torch.randn_like(x1)
        d = torch.randint(0, self._flow.prefix_max_delay + 1, (b, 1), device=x1.device)
        committed = torch.arange(h, device=x1.device) < d  # (B, H): given clean
        tau = torch.where(committed, 1.0, torch.rand(b, 1, device=x1.device).expand(b, h))
        x = tau[..., None] * x1 + (1.0 - tau[..., None]) * x0
        v = self.components["velocity"](x, tau, self._cond(batch))
        err = (v - (x1 - x0)).pow(2).mean(-1)  # (B, H)
        keep = ~committed
        if "action_is_pad" in batch:  # steps past an episode's end
            keep = keep & ~batch["action_is_pad"].bool()
        return {"loss": (err * keep).sum() / keep.sum().clamp_min(1)}

    def _guided_chunk(
        self,
        obs: dict[str, torch.Tensor],
        env_ids: Sequence[Hashable],
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        return rtc_sample(
            self._velocity(self._cond(obs)),
            self._noise(env_ids),
            prefix,
            request.weights_like(prefix),
            num_steps=self._flow.num_steps,
            max_guidance_weight=request.beta,
            jacobian=request.jacobian,
        )

    def _prefix_chunk(
        self,
        obs: dict[str, torch.Tensor],
        env_ids: Sequence[Hashable],
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        committed = request.committed_like(prefix)  # (B, H): the first d actions
        v = self._velocity(self._cond(obs), committed)
        keep = committed[..., None]
        x = torch.where(keep, prefix, self._noise(env_ids))
        n = self._flow.num_steps
        for k in range(n):
            x = torch.where(keep, prefix, x + v(x, k / n) / n)
        return x

    def _explore(self, chunk: torch.Tensor, env_ids: Sequence[Hashable]) -> torch.Tensor:
        return chunk + self._flow.explore_std * self._noise(env_ids)

    def _update(self) -> None:
        self.updates += 1
