"""Flow-matching action-chunk policy with true real-time-chunking guidance.

Convention (docs/chunking.md): flow time ``tau`` runs from 0 (noise) to 1 (data),
``x_tau = tau * x1 + (1 - tau) * x0`` with ``x0 ~ N(0, I)``, and the network regresses the
velocity ``x1 - x0``. Components:

- ``encoder``: observation features -> ``cond`` (an ``mlp`` over the concatenated, flattened
  features by default; an ``observation_encoder`` for cameras: a conv encoder per camera);
- ``velocity``: ``flow_velocity_mlp``, ``v(x (B, H, A), tau, cond) -> (B, H, A)``.

Training time is drawn from ``tau = tau_max * Beta(a, b)`` (default ``a=1, b=1.5``: pi0's
``Beta(1.5, 1)`` on its reversed clock, mirrored into ours; the density falls from tau = 0, so
noisy inputs are seen most) or uniformly on ``[0, tau_max]``.

Training-time real-time chunking (``prefix_max_delay > 0``, see :mod:`.prefix`): the first d
actions of each training chunk are given clean and the loss covers the rest; the ``_prefix_chunk``
hook (guidance method ``"prefix"``, the ``rtc_trained`` executor) overwrites the prefix with the
committed actions while sampling. Guided RTC (``_guided_chunk``, the ``rtc`` executor) works on
such a policy unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from envactor.chunking.guidance import euler_sample, rtc_sample
from envactor.chunking.request import GuidanceRequest
from envactor.normalize import Normalizer
from envactor.policy.base import EnvIds, Policy, PolicyError
from envactor.policy.features import (
    check_encoder_head,
    edge_fill,
    encode_observation,
    gaussian_explore,
    reads_observation_dict,
)
from envactor.policy.policies.flow.prefix import prefix_mask, sample_delays
from envactor.policy.specs import PolicyParams
from envactor.registry import POLICY_REGISTRY


class FlowParams(PolicyParams):
    """Flow policy parameters (``policy.params``).

    ``num_steps``: Euler steps at inference; ``explore_std``: Gaussian noise (normalized action
    units) added in collect mode; ``tau_sampling``/``tau_beta``/``tau_max``: training-time law;
    ``prefix_max_delay``: training-time RTC, d drawn from ``{0..prefix_max_delay}`` per example
    (0: off; needs a velocity that reads per-token time, ``flow_prefix_velocity_mlp``).
    """

    num_steps: int = Field(default=5, ge=1)
    explore_std: float = Field(default=0.1, ge=0)
    tau_sampling: Literal["beta", "uniform"] = "beta"
    tau_beta: tuple[float, float] = (1.0, 1.5)
    tau_max: float = Field(default=0.999, gt=0.0, le=1.0)
    prefix_max_delay: int = Field(default=0, ge=0)

    @field_validator("tau_beta")
    @classmethod
    def _positive(cls, v: tuple[float, float]) -> tuple[float, float]:
        if min(v) <= 0:
            raise ValueError(f"both Beta parameters must be > 0, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _prefix_fits(self) -> FlowParams:
        if self.prefix_max_delay >= self.horizon:
            raise ValueError(
                f"prefix_max_delay must be < horizon={self.horizon} (some action must remain to "
                f"predict), got {self.prefix_max_delay}"
            )
        return self


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
        self._reads_dict = reads_observation_dict(self.components["encoder"])
        if self._flow.prefix_max_delay and not getattr(
            self.components["velocity"], "token_time", 0
        ):
            found = type(self.components["velocity"]).__name__
            raise PolicyError(
                f"policy 'flow': policy.params.prefix_max_delay="
                f"{self._flow.prefix_max_delay} (training-time RTC) needs a velocity that reads "
                f"per-token flow time (model.components.velocity.type: flow_prefix_velocity_mlp), "
                f"got {found}"
            )

    @property
    def _flow(self) -> FlowParams:
        return cast(FlowParams, self.params)

    def _cond(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        encoder = self.components["encoder"]
        return encode_observation(encoder, obs, list(self.input_features), self._reads_dict)

    def _velocity_fn(self, cond: torch.Tensor, committed: torch.Tensor | None = None) -> Any:
        """``v(x, tau)``; ``committed`` (B, H) bool marks clean prefix tokens (flow time 1)."""
        velocity = self.components["velocity"]

        def fn(x: torch.Tensor, tau: float) -> torch.Tensor:
            if committed is None:
                v: torch.Tensor = velocity(x, tau, cond)
            else:
                token_tau = torch.where(committed, 1.0, tau).to(x.dtype)
                v = velocity(x, tau, cond, token_tau=token_tau)
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
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        """True RTC guidance (``rtc_sample``); runs under ``no_grad``, the VJP enables grad."""
        cond = self._cond(obs)  # a constant for the backward passes
        noise = self._randn(env_ids, *self.action_shape).to(cond.dtype)
        return rtc_sample(
            self._velocity_fn(cond),
            noise,
            prefix.to(cond.dtype),
            request.weights_like(prefix),
            num_steps=self._flow.num_steps,
            max_guidance_weight=request.beta,
            jacobian=request.jacobian,
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
        max_delay = self._flow.prefix_max_delay
        keep_mask: torch.Tensor | None
        if max_delay:  # training-time RTC: the first d tokens clean (time 1), no loss on them
            committed = prefix_mask(sample_delays(x1.shape[0], max_delay, x1.device), x1.shape[1])
            token_tau = torch.where(committed, 1.0, tau[:, None]).to(x1.dtype)
            t = token_tau[..., None]
            x_tau = t * x1 + (1.0 - t) * x0
            v = self.components["velocity"](x_tau, tau, self._cond(batch), token_tau=token_tau)
            keep_mask = ~committed if pad is None else ~committed & ~pad.bool()
        else:
            t = tau[:, None, None]
            x_tau = t * x1 + (1.0 - t) * x0
            v = self.components["velocity"](x_tau, tau, self._cond(batch))
            keep_mask = None if pad is None else ~pad.bool()
        err = (v - (x1 - x0)).pow(2).mean(-1)  # (B, H)
        if keep_mask is not None:
            keep = keep_mask.to(err.dtype)
            return {"loss": (err * keep).sum() / keep.sum().clamp_min(1.0)}
        return {"loss": err.mean()}

    def _prefix_chunk(
        self,
        obs: dict[str, torch.Tensor],
        env_ids: EnvIds,
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        """Training-time RTC: Euler sampling with the committed tokens (the first d of each
        env) overwritten by ``prefix`` at every step (needs ``prefix_max_delay > 0``; a d
        above it was never trained on)."""
        if not self._flow.prefix_max_delay:
            raise PolicyError(
                "policy 'flow': guidance method 'prefix' (executor rtc_trained) needs a policy "
                "trained with training-time RTC (policy.params.prefix_max_delay > 0), got "
                "prefix_max_delay=0"
            )
        committed = request.committed_like(prefix)
        cond = self._cond(obs)
        x = self._randn(env_ids, *self.action_shape).to(cond.dtype)
        keep = committed[..., None]
        prefix = prefix.to(x.dtype)
        fn = self._velocity_fn(cond, committed)
        n = self._flow.num_steps
        x = torch.where(keep, prefix, x)
        for k in range(n):
            x = torch.where(keep, prefix, x + fn(x, k / n) / n)
        return x

    def _explore(self, chunk: torch.Tensor, env_ids: EnvIds) -> torch.Tensor:
        return gaussian_explore(self, chunk, env_ids, self._flow.explore_std)
