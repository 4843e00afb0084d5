"""``reacher_expert``: analytic 2-link inverse kinematics + joint-space PD for ReacherReach.

From the observation alone: joint angles ``q = atan2(sin, cos)``, velocities, target ``(x, y)``.
The target joint angles are the closed-form IK of a planar 2-link arm with link lengths
``l1 = 0.1`` and ``l2 = 0.11`` (elbow angle ``q1* = +acos((r^2 - l1^2 - l2^2) / (2 l1 l2))``,
always the positive-elbow solution, capped at the joint limit; shoulder
``q0* = atan2(y, x) - atan2(l2 sin q1*, l1 + l2 cos q1*)``; unreachable targets project onto
the workspace). The command is ``clip(kp * wrap(q* - q) - kd * dq, -1, 1)``.

For ``horizon > 1`` the chunk is the law rolled out on a nominal decoupled model of each joint
(``ddq = gear * u - damping * dq`` per unit armature, Reacher's XML values).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from pydantic import Field, model_validator

from envactor.policy.base import EnvIds, Policy
from envactor.policy.specs import NormName, PolicyParams
from envactor.registry import POLICY_REGISTRY

DT = 0.02
GEAR = 200.0
DAMPING = 1.0
ELBOW_LIMIT = 3.0


class ReacherExpertParams(PolicyParams):
    """Link lengths (m) and PD gains (command units per rad, per rad/s)."""

    state_key: str = "observation.state"
    horizon: int = Field(default=1, gt=0)
    n_action_steps: int = Field(default=1, gt=0)
    action_norm: NormName = "identity"
    control_hz: float | None = Field(default=1.0 / DT, gt=0.0)
    link_lengths: tuple[float, float] = (0.1, 0.11)
    kp: float = Field(default=2.0, gt=0.0)
    kd: float = Field(default=0.2, ge=0.0)

    @model_validator(mode="after")
    def _raw_units(self) -> ReacherExpertParams:
        self.require_raw_units(
            "reacher_expert", self.state_key, (10, 2), "Reacher's raw observation", "raw commands"
        )
        return self


def inverse_kinematics(target: np.ndarray, l1: float, l2: float) -> np.ndarray:
    """Joint angles ``(B, 2)`` that put the fingertip on ``target`` ``(B, 2)`` (positive elbow)."""
    r2 = (target**2).sum(-1)
    c = np.clip((r2 - l1 * l1 - l2 * l2) / (2 * l1 * l2), -1.0, 1.0)
    q1 = np.minimum(np.arccos(c), ELBOW_LIMIT)
    reach = np.arctan2(l2 * np.sin(q1), l1 + l2 * np.cos(q1))
    return np.stack([np.arctan2(target[:, 1], target[:, 0]) - reach, q1], axis=-1)


def _wrap(x: np.ndarray) -> np.ndarray:
    return np.remainder(x + math.pi, 2 * math.pi) - math.pi


@POLICY_REGISTRY.register("reacher_expert")
class ReacherExpert(Policy):
    """Scripted reacher (see the module docstring); stateless, so ``reset`` has nothing to clear."""

    Params = ReacherExpertParams
    trainable = False

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor:
        p: ReacherExpertParams = self.params  # type: ignore[assignment]
        state = obs[p.state_key]
        x = state.detach().cpu().numpy().astype(np.float64)  # tiny batches: numpy is ~10x faster
        q = np.arctan2(x[:, 2:4], x[:, 0:2])
        dq = x[:, 6:8]
        goal = inverse_kinematics(x[:, 4:6], *p.link_lengths)
        chunk = np.empty((len(x), p.horizon, 2), dtype=np.float32)
        for k in range(p.horizon):
            u = np.clip(p.kp * _wrap(goal - q) - p.kd * dq, -1.0, 1.0)
            chunk[:, k] = u
            for _ in range(2):  # Reacher's frame_skip: two 0.01 s physics steps
                dq = dq + (GEAR * u - DAMPING * dq) * (DT / 2)
                q = q + dq * (DT / 2)
        return torch.from_numpy(chunk).to(state.device)

    def _reset(self, env_ids: Sequence[Hashable] | None) -> None:
        return None
