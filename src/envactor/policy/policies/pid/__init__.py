"""PID controller as a policy: no weights, integrator and previous error kept per env id."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from pydantic import Field, model_validator

from envactor.policy.base import EnvIds, Policy
from envactor.policy.specs import NormName, PolicyParams
from envactor.registry import POLICY_REGISTRY


class PIDParams(PolicyParams):
    """Gains per action dim (a scalar broadcasts); error = setpoint - state[indices]."""

    state_key: str = "observation.state"
    indices: list[int] = Field(default_factory=lambda: [0])
    setpoint: list[float] = Field(default_factory=lambda: [0.0])
    kp: list[float] | float = 1.0
    ki: list[float] | float = 0.0
    kd: list[float] | float = 0.0
    dt: float = Field(default=0.05, gt=0)
    horizon: int = Field(default=1, gt=0)
    n_action_steps: int = Field(default=1, gt=0)
    action_norm: NormName = "identity"

    @model_validator(mode="after")
    def _dims(self) -> PIDParams:
        a = self.action_dim
        spec = self.input_features.get(self.state_key)
        if spec is None or spec.norm != "identity" or self.action_norm != "identity":
            raise ValueError(
                f"PID works in raw units: input feature {self.state_key!r} must be declared with "
                f"norm 'identity' and action_norm must be 'identity'"
            )
        if len(self.indices) != a or len(self.setpoint) != a:
            raise ValueError(
                f"indices ({len(self.indices)}) and setpoint ({len(self.setpoint)}) must have "
                f"action_dim={a} entries"
            )
        for name in ("kp", "ki", "kd"):
            g = getattr(self, name)
            if isinstance(g, list) and len(g) != a:
                raise ValueError(
                    f"{name} has {len(g)} entries, expected action_dim={a} or a scalar"
                )
        return self


@POLICY_REGISTRY.register("pid")
class PIDPolicy(Policy):
    """PID feedback on selected state dims, state per env id (reset per env)."""

    Params = PIDParams
    trainable = False
    _gains: torch.Tensor  # (3, A): kp, ki, kd rows
    _setpoint: torch.Tensor  # (A,)

    def __init__(self, components=None, normalizer=None, **params) -> None:  # type: ignore[no-untyped-def]
        super().__init__(components, normalizer, **params)
        p: PIDParams = self.params  # type: ignore[assignment]
        a = p.action_dim

        def vec(x: list[float] | float) -> torch.Tensor:
            return torch.as_tensor(x if isinstance(x, list) else [x] * a, dtype=torch.float32)

        self.register_buffer(
            "_gains", torch.stack([vec(p.kp), vec(p.ki), vec(p.kd)]), persistent=False
        )
        self.register_buffer("_setpoint", vec(p.setpoint), persistent=False)
        self._state: dict[Hashable, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor:
        p: PIDParams = self.params  # type: ignore[assignment]
        err = self._setpoint - obs[p.state_key][:, p.indices]
        kp, ki, kd = self._gains.unbind(0)
        out = torch.empty_like(err)
        for b, env in enumerate(env_ids):
            integ, prev = self._state.get(env, (torch.zeros_like(err[b]), None))
            integ = integ + err[b] * p.dt
            deriv = torch.zeros_like(err[b]) if prev is None else (err[b] - prev) / p.dt
            self._state[env] = (integ, err[b].clone())
            out[b] = kp * err[b] + ki * integ + kd * deriv
        return out[:, None, :].expand(-1, p.horizon, -1).clone()

    def _reset(self, env_ids: Sequence[Hashable] | None) -> None:
        if env_ids is None:
            self._state.clear()
        else:
            for e in env_ids:
                self._state.pop(e, None)
