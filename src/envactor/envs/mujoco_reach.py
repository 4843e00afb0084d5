"""``envactor/ReacherReach-v0``: gymnasium's MuJoCo ``Reacher-v5`` with a success criterion.

Imports MuJoCo (through gymnasium's Reacher); ``envactor.envs`` registers this module by
entry-point string, so it is imported only when the env is made.

Unchanged from Reacher-v5: the model (two links of 0.1 m, fingertip 0.11 m past the elbow,
motors with gear 200 and control range +-1), dt = 0.02 s (50 Hz), the reward, the start state
(joints U(-0.1, 0.1), target uniform in the disc of radius 0.2 m) and the 10-dim observation
``[cos q0, cos q1, sin q0, sin q1, target_x, target_y, dq0, dq1, tip_x - target_x,
tip_y - target_y]``, here as float32. Added: ``action_noise_std`` (Gaussian noise on the
command from the env's seeded generator, then clipped to +-1) and the success info.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv
from gymnasium.spaces import Box

SUCCESS_DIST = 0.02
"""Metres between fingertip and target that count as reached."""


class ReacherReachEnv(ReacherEnv):
    """Reach a random target with the fingertip.

    ``info["success"]`` on every step is ``info["distance"] < success_dist`` (0.02 m), the
    fingertip-target distance after the step; at the final step it is the task's criterion:
    the fingertip is within 0.02 m of the target when the episode ends.

    Args:
        action_noise_std: std of the Gaussian noise added to each command (control units, the
            range is +-1); 0 disables.
        success_dist: reach tolerance in metres.
        **kwargs: passed to gymnasium's ``ReacherEnv`` (``render_mode``, ``frame_skip``, ...).
    """

    def __init__(
        self, action_noise_std: float = 0.0, success_dist: float = SUCCESS_DIST, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if action_noise_std < 0:
            raise ValueError(f"action_noise_std must be >= 0, got {action_noise_std}")
        self.action_noise_std = float(action_noise_std)
        self.success_dist = float(success_dist)
        self.observation_space = Box(-np.inf, np.inf, shape=(10,), dtype=np.float32)

    def step(  # type: ignore[override]
        self, action: Any
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Reacher's step on ``clip(action + noise, -1, 1)``; adds ``distance`` and ``success``."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,):
            raise ValueError(f"ReacherReach: expected an action of shape (2,), got {a.shape}")
        if self.action_noise_std > 0:
            a = a + self.action_noise_std * self.np_random.standard_normal(2)
        obs, reward, terminated, truncated, info = super().step(np.clip(a, -1.0, 1.0))
        info.update(self._reach_info())
        return obs.astype(np.float32), float(reward), terminated, truncated, info

    def reset_model(self) -> np.ndarray:
        return np.asarray(super().reset_model(), dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        info.update(self._reach_info())
        return obs, info

    def _reach_info(self) -> dict[str, Any]:
        dist = float(
            np.linalg.norm((self.get_body_com("fingertip") - self.get_body_com("target"))[:2])
        )
        return {"distance": dist, "success": dist < self.success_dist}
