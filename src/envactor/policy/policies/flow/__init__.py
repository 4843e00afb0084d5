"""Flow-matching action-chunk policy with true real-time-chunking guidance.

Convention (REFERENCE.md section 1): flow time ``tau`` runs from 0 (noise) to 1 (data),
``x_tau = tau * x1 + (1 - tau) * x0`` with ``x0 ~ N(0, I)``, and the network regresses the
velocity ``x1 - x0``. Components:

- ``encoder``: observation features -> ``cond`` (an ``mlp`` over the concatenated, flattened
  features by default);
- ``velocity``: ``flow_velocity_mlp``, ``v(x (B, H, A), tau, cond) -> (B, H, A)``.

Training time is drawn from ``tau = tau_max * Beta(a, b)`` (default ``a=1, b=1.5``: pi0's
``Beta(1.5, 1)`` on its reversed clock, mirrored into ours; the density falls from tau = 0, so
noisy inputs are seen most) or uniformly on ``[0, tau_max]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from pydantic import Field, field_validator
from torch import nn

from envactor.chunking.guidance import Jacobian, euler_sample, rtc_sample
from envactor.normalize import Normalizer
from envactor.policy.base import EnvIds, Policy
from envactor.policy.features import (
    check_encoder_head,
    edge_fill,
    flat_observation,
    gaussian_explore,
)
from envactor.policy.specs import PolicyParams
from envactor.registry import POLICY_REGISTRY


class FlowParams(PolicyParams):
    """Flow policy parameters (``policy.params``).

    ``num_steps``: Euler steps at inference; ``explore_std``: Gaussian noise (normalized action
    units) added in collect mode; ``tau_sampling``/``tau_beta``/``tau_max``: training-time law.
    """

    num_steps: int = Field(default=5, ge=1)
    explore_std: float = Field(default=0.1, ge=0)
    tau_sampling: Literal["beta", "uniform"] = "beta"
    tau_beta: tuple[float, float] = (1.0, 1.5)
    tau_max: float = Field(default=0.999, gt=0.0, le=1.0)

    @field_validator("tau_beta")
    @classmethod
    def _positive(cls, v: tuple[float, float]) -> tuple[float, float]:
        if min(v) <= 0:
            raise ValueError(f"both Beta parameters must be > 0, got {list(v)}")
        return v


@POLICY_REGISTRY.register("flow")
class FlowPolicy(Policy):
    """Flow-matching chunk policy: Euler sampling, RTC guidance (true VJP), masked MSE loss."""

    Params = FlowParams
    required_components = ("encoder", "velocity")

    def __init__(
        self,
        components: Mapping[str, nn.Module] | None = None,
        normalizer: Normalizer | None = None,
        **params: Any,
    ) -> None:
        super().__init__(components, normalizer, **params)
        check_encoder_head(self, "velocity")

    @property
    def _flow(self) -> FlowParams:
        return cast(FlowParams, self.params)

    def _cond(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        cond: torch.Tensor = self.components["encoder"](
            flat_observation(obs, list(self.input_features))
        )
        return cond

    def _velocity_fn(self, cond: torch.Tensor) -> Any:
        velocity = self.components["velocity"]

        def fn(x: torch.Tensor, tau: float) -> torch.Tensor:
            v: torch.Tensor = velocity(x, tau, cond)
            return v

        return fn

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor:
        cond = self._cond(obs)  # once per call, reused by every Euler step
        noise = self._randn(env_ids, *self.action_shape).to(cond.dtype)
        return euler_sample(self._velocity_fn(cond), noise, num_steps=self._flow.num_steps)

    def _guided_chunk(
        self,
        obs: dict[str, torch.Tensor],
        env_ids: EnvIds,
        prefix: torch.Tensor,
        weights: torch.Tensor,
        beta: float,
        *,
        jacobian: str = "vjp",
    ) -> torch.Tensor:
        """True RTC guidance (``rtc_sample``); runs under ``no_grad``, the VJP enables grad."""
        if jacobian not in ("vjp", "identity"):
            raise ValueError(f"jacobian must be 'vjp' or 'identity', got {jacobian!r}")
        cond = self._cond(obs)  # a constant for the backward passes
        noise = self._randn(env_ids, *self.action_shape).to(cond.dtype)
        return rtc_sample(
            self._velocity_fn(cond),
            noise,
            prefix.to(cond.dtype),
            weights,
            num_steps=self._flow.num_steps,
            max_guidance_weight=beta,
            jacobian=cast(Jacobian, jacobian),
        )

    def sample_tau(self, n: int, device: torch.device) -> torch.Tensor:
        """Training flow times ``(n,)`` in ``[0, tau_max]`` (global torch RNG)."""
        p = self._flow
        if p.tau_sampling == "uniform":
            u = torch.rand(n)
        else:
            a, b = p.tau_beta
            u = torch.distributions.Beta(torch.tensor(a), torch.tensor(b)).sample((n,))
        return (p.tau_max * u).to(device)

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pad = batch.get("action_is_pad")
        x1 = batch["action"] if pad is None else edge_fill(batch["action"], pad.bool())
        x0 = torch.randn_like(x1)
        tau = self.sample_tau(x1.shape[0], x1.device).to(x1.dtype)
        t = tau[:, None, None]
        x_tau = t * x1 + (1.0 - t) * x0
        v = self.components["velocity"](x_tau, tau, self._cond(batch))
        err = (v - (x1 - x0)).pow(2).mean(-1)  # (B, H)
        if pad is not None:
            keep = (~pad.bool()).to(err.dtype)
            return {"loss": (err * keep).sum() / keep.sum().clamp_min(1.0)}
        return {"loss": err.mean()}

    def _explore(self, chunk: torch.Tensor, env_ids: EnvIds) -> torch.Tensor:
        return gaussian_explore(self, chunk, env_ids, self._flow.explore_std)
