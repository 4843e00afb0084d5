"""``pendulum_expert``: a bimodal, observation-only swing-up controller for PendulumSwingUp.

From the observation ``[cos theta, sin theta, theta_dot]`` alone, each step picks one of three
laws (``E = theta_dot^2 / 2 + 15 cos theta`` is the energy per unit inertia, 15 upright):

1. push: near the bottom (``cos theta < -push_cos``) and slow (``|theta_dot| < push_speed``),
   full torque in the env's committed direction ``d`` (+1 counter-clockwise, -1 clockwise),
   drawn with probability 1/2 per episode from the policy's per-env generator;
2. pump: ``u = clip(k_E (E_top + margin - E) theta_dot, -2, 2)`` (energy shaping: full torque
   along the motion until the energy reaches the top's, then gentle);
3. balance: within ``balance_angle`` of upright, LQR ``u = -(k_theta wrap(theta) + k_dot
   theta_dot)``: the discrete LQR of the env's step linearized at the top, with the step
   ``dt = 1 / control_hz`` (Q = diag(1, 0.1), R = 0.05; see :func:`lqr_gains`): (10.31, 2.49) at
   20 Hz, (11.11, 2.85) at 50 Hz, tending to the continuous-time LQR as dt shrinks.

The expert's control period is ``1 / control_hz`` (20 Hz in ``pendulum_expert.yaml``, 50 Hz in
``pendulum_expert_50hz.yaml``) and must match the env's ``dt``. Push and pump are continuous-time
state feedback (thresholds in rad and rad/s, energy gain in N m s / rad^2 per unit energy), so
they need no retuning; only the LQR and the chunk rollout depend on ``dt``.

Only the push depends on ``d``; pump and balance are mirror-symmetric state feedback, so after the
first push the sign of ``theta_dot`` reveals the mode and the two modes never meet again. With
these gains the pole reverses twice and goes over the top on its third half-swing, in direction
``d`` (about 3 s). Averaging the two modes gives zero torque at the start (the pole stays down);
executing the other mode's push brakes the swing.

For ``horizon > 1`` the chunk is the law rolled out on the nominal model (gymnasium's Pendulum
equations at ``dt``, without noise), so chunked executors get a plan, not a repeated action.

``perturb_std`` (default 0) makes the expert add Gaussian noise to each of its own torques (from
its per-env generator, then clipped), DART-style. The perturbed torque is the action it returns,
so a dataset collected with it records the torque actually applied (env-side
``action_noise_std`` is applied inside the env and never recorded). That is what lets a chunk
policy learn how the rest of a chunk depends on its first actions: in such data the later
actions are the expert's response to the state the earlier, recorded, actions led to (the
``envactor demo`` collects with it; see docs/tasks.md).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from envactor.policy.base import EnvIds, Policy
from envactor.policy.specs import NormName, PolicyParams
from envactor.registry import POLICY_REGISTRY

GRAVITY_GAIN = 15.0  # 3 g / (2 l) with g = 10, l = 1
TORQUE_GAIN = 3.0  # 3 / (m l^2)
MAX_SPEED = 8.0
LQR_Q = (1.0, 0.1)  # per-step state cost on (theta, theta_dot)
LQR_R = 0.05  # per-step torque cost (scaling Q and R together leaves the gains unchanged)

Direction = Literal["random", "ccw", "cw"]


def lqr_gains(
    dt: float, q: tuple[float, float] = LQR_Q, r: float = LQR_R, decimals: int | None = 2
) -> tuple[float, float]:
    """Balance gains ``(k_theta, k_dot)`` of ``u = -(k_theta theta + k_dot theta_dot)``.

    The infinite-horizon discrete LQR of the env's semi-implicit Euler step linearized upright
    (``theta_dot' = theta_dot + (15 theta + 3 u) dt``, ``theta' = theta + theta_dot' dt``), with
    per-step cost ``x^T Q x + R u^2`` on ``x = (theta, theta_dot)``, solved by Riccati iteration.
    Rounded to ``decimals`` (2 by default, which reproduces the gains the 20 Hz expert has always
    used, (10.31, 2.49)); None keeps full precision. As dt shrinks the gains tend to the
    continuous-time LQR's (11.71, 3.13).
    """
    if dt <= 0:
        raise ValueError(f"lqr_gains: dt must be > 0 seconds, got {dt}")
    a = np.array([[1.0 + GRAVITY_GAIN * dt * dt, dt], [GRAVITY_GAIN * dt, 1.0]])
    b = np.array([[TORQUE_GAIN * dt * dt], [TORQUE_GAIN * dt]])
    cost_x, cost_u = np.diag(q), np.array([[r]])
    p = cost_x.copy()
    for _ in range(100_000):
        k = np.linalg.solve(cost_u + b.T @ p @ b, b.T @ p @ a)
        p_next = cost_x + a.T @ p @ (a - b @ k)
        if np.max(np.abs(p_next - p)) <= 1e-10 * max(1.0, float(np.max(np.abs(p)))):
            break
        p = p_next
    else:
        raise RuntimeError(f"lqr_gains: the Riccati iteration did not converge at dt={dt}")
    gains = (float(k[0, 0]), float(k[0, 1]))
    return gains if decimals is None else (round(gains[0], decimals), round(gains[1], decimals))


class PendulumExpertParams(PolicyParams):
    """Gains of the swing-up; ``direction`` forces one mode ("ccw" +1, "cw" -1) or draws it."""

    state_key: str = "observation.state"
    horizon: int = Field(default=1, gt=0)
    n_action_steps: int = Field(default=1, gt=0)
    action_norm: NormName = "identity"
    control_hz: float | None = Field(default=20.0, gt=0.0)
    direction: Direction = "random"
    max_torque: float = Field(default=2.0, gt=0.0)
    push_cos: float = Field(default=0.95, ge=0.0, le=1.0)
    push_speed: float = Field(default=0.5, ge=0.0)
    energy_gain: float = Field(default=1.0, gt=0.0)
    energy_margin: float = Field(default=0.5, ge=0.0)
    balance_angle: float = Field(default=0.6, gt=0.0, lt=math.pi)
    balance_gains: tuple[float, float] | None = None
    """(k_theta, k_dot); None: :func:`lqr_gains` at ``dt = 1 / control_hz``."""
    perturb_std: float = Field(default=0.0, ge=0.0)
    """Std (N m) of Gaussian noise the expert adds to each of its own torques (then clips), from
    its per-env generator; the perturbed torque is the action it outputs, so a dataset records
    the torque actually applied (DART-style noise injection, see the module docstring)."""

    @model_validator(mode="after")
    def _raw_units(self) -> PendulumExpertParams:
        if self.control_hz is None:
            raise ValueError(
                "pendulum_expert needs its control period: set control_hz (the env's 1 / dt, "
                "20.0 for envactor/PendulumSwingUp-v0, 50.0 for envactor/PendulumSwingUp50-v0)"
            )
        self.require_raw_units(
            "pendulum_expert", self.state_key, (3, 1), "raw [cos, sin, theta_dot]", "one raw torque"
        )
        return self


@POLICY_REGISTRY.register("pendulum_expert")
class PendulumExpert(Policy):
    """Scripted bimodal swing-up (see the module docstring); direction kept per env id."""

    Params = PendulumExpertParams
    trainable = False

    def __init__(self, components: Any = None, normalizer: Any = None, **params: Any) -> None:
        super().__init__(components, normalizer, **params)
        p: PendulumExpertParams = self.params  # type: ignore[assignment]
        assert p.control_hz is not None  # checked by PendulumExpertParams
        self.dt = 1.0 / p.control_hz  # the control period (s) the expert plans with
        self.balance_gains = p.balance_gains or lqr_gains(self.dt)  # (k_theta, k_dot) in use
        self._direction: dict[Hashable, float] = {}

    def committed_direction(self, env_id: Hashable) -> int | None:
        """Env ``env_id``'s mode this episode: +1 ccw, -1 cw, None before its first chunk."""
        d = self._direction.get(env_id)
        return None if d is None else int(d)

    def _directions(self, env_ids: EnvIds) -> np.ndarray:
        p: PendulumExpertParams = self.params  # type: ignore[assignment]
        new = [e for e in env_ids if e not in self._direction]
        if new:
            if p.direction == "random":
                draws = self._randn(new, 1)[:, 0].tolist()
                signs = [1.0 if x >= 0 else -1.0 for x in draws]
            else:
                signs = [1.0 if p.direction == "ccw" else -1.0] * len(new)
            self._direction.update(zip(new, signs))
        return np.array([self._direction[e] for e in env_ids], dtype=np.float64)

    def _law(self, theta: np.ndarray, dot: np.ndarray, d: np.ndarray) -> np.ndarray:
        p: PendulumExpertParams = self.params  # type: ignore[assignment]
        cos = np.cos(theta)
        energy = 0.5 * dot**2 + GRAVITY_GAIN * cos
        u = p.energy_gain * (GRAVITY_GAIN + p.energy_margin - energy) * dot  # pump
        k_theta, k_dot = self.balance_gains
        wrapped = np.arctan2(np.sin(theta), cos)
        u = np.where(cos > math.cos(p.balance_angle), -(k_theta * wrapped + k_dot * dot), u)
        u = np.where((cos < -p.push_cos) & (np.abs(dot) < p.push_speed), p.max_torque * d, u)
        return np.clip(u, -p.max_torque, p.max_torque)

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor:
        p: PendulumExpertParams = self.params  # type: ignore[assignment]
        state = obs[p.state_key]
        x = state.detach().cpu().numpy().astype(np.float64)  # tiny batches: numpy is ~10x faster
        d = self._directions(env_ids)
        theta = np.arctan2(x[:, 1], x[:, 0])
        dot = x[:, 2]
        chunk = np.empty((len(x), p.horizon, 1), dtype=np.float32)
        dt = self.dt
        noise = None
        if p.perturb_std > 0:
            noise = p.perturb_std * self._randn(env_ids, p.horizon).cpu().numpy().astype(np.float64)
        for k in range(p.horizon):
            u = self._law(theta, dot, d)
            if noise is not None:
                u = np.clip(u + noise[:, k], -p.max_torque, p.max_torque)
            chunk[:, k, 0] = u
            dot = np.clip(
                dot + (GRAVITY_GAIN * np.sin(theta) + TORQUE_GAIN * u) * dt, -MAX_SPEED, MAX_SPEED
            )
            theta = theta + dot * dt
        return torch.from_numpy(chunk).to(state.device)

    def _reset(self, env_ids: Sequence[Hashable] | None) -> None:
        if env_ids is None:
            self._direction.clear()
        else:
            for e in env_ids:
                self._direction.pop(e, None)
