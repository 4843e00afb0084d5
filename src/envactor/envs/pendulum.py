"""Pendulum swing-up from hanging: ``envactor/PendulumSwingUp-v0`` (20 Hz) and ``...50-v0`` (50 Hz).

Dynamics, observation and reward are gymnasium's ``Pendulum-v1`` (g = 10, m = l = 1, max torque
2.0, speed clipped to 8 rad/s, semi-implicit Euler), with the step ``dt`` a constructor argument
(gymnasium's 0.05 s by default). What changes:

* reset: ``theta = pi + U(-0.05, 0.05)``, ``theta_dot = U(-0.05, 0.05)`` (hanging, near rest), so
  the pole must be swung up (the torque alone cannot lift it: 2.0 vs a gravity torque of 15).
* ``action_noise_std``: Gaussian noise added to the commanded torque before each physics step
  (then clipped to +-2.0), drawn from the env's own seeded generator. It is per step: at a
  higher control rate the same std is averaged over more steps, so it perturbs the motion less
  (its effect on the speed over a fixed time scales with ``std * sqrt(dt)``).
* ``info`` on every step: ``success``, ``upright_steps``, ``swing_direction`` (see
  :class:`PendulumSwingUpEnv`).

The reward is gymnasium's per-step cost, not scaled by ``dt`` (a 50 Hz return sums 2.5 times as
many steps). The episode length is the registered ``TimeLimit`` (200 steps at 20 Hz, 400 at 50
Hz); override it with ``gym.make(..., max_episode_steps=T)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv

UPRIGHT_TOL = 0.3
"""Radians from upright that count as upright (``|wrap(theta)| < UPRIGHT_TOL``)."""
HOLD_TIME = 1.5
"""Seconds the pole must have been upright at the end of the episode (30 steps at 20 Hz)."""
DT = 0.05
"""Gymnasium's Pendulum step (s); the 20 Hz task's control period."""
INIT_ANGLE_TOL = 0.05
INIT_SPEED_TOL = 0.05


def wrap_angle(theta: float) -> float:
    """Angle in [-pi, pi); 0 is upright."""
    return float((theta + np.pi) % (2 * np.pi) - np.pi)


class PendulumSwingUpEnv(PendulumEnv):
    """Pendulum swing-up from hanging, at a control step of ``dt`` seconds.

    Success: ``info["success"]`` is True when the pole has been upright (``|wrap(theta)| < 0.3``
    rad) on each of the last ``hold_steps`` consecutive steps, counting the current one;
    ``hold_steps`` is ``hold_time / dt`` (1.5 s: 30 steps at 20 Hz, 75 at 50 Hz) unless given. It
    is reported on every step ("the last K steps were upright"); the runtime reads it at the
    final step, where it is the task's success criterion.

    ``info["upright_steps"]`` is the current run of consecutive upright steps and
    ``info["swing_direction"]`` the side the pole went over, from the unwrapped angle that the
    physics integrates: +1 counter-clockwise (theta grew from pi towards 2 pi), -1 clockwise
    (theta fell towards 0), 0 while theta is within pi/2 of its hanging value pi.

    Args:
        action_noise_std: std of the Gaussian noise added to the torque on each step (N m); 0
            disables. Per step, so the same std disturbs a faster-stepped env less.
        hold_steps: K, the number of final upright steps required for success; default
            ``hold_time / dt`` rounded up. Give this or ``hold_time``, not both.
        upright_tol: radians from upright that count as upright.
        render_mode: as for gymnasium's Pendulum.
        dt: integration and control step in seconds (0.05: gymnasium's 20 Hz; 0.02: 50 Hz).
        hold_time: seconds of final upright steps for success (default 1.5).
    """

    def __init__(
        self,
        action_noise_std: float = 0.0,
        hold_steps: int | None = None,
        upright_tol: float = UPRIGHT_TOL,
        render_mode: str | None = None,
        *,
        dt: float = DT,
        hold_time: float | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        if action_noise_std < 0:
            raise ValueError(f"action_noise_std must be >= 0, got {action_noise_std}")
        if not 0 < dt <= 0.2:
            raise ValueError(f"PendulumSwingUp: dt must be in (0, 0.2] seconds, got {dt}")
        if hold_steps is not None and hold_time is not None:
            raise ValueError(
                f"PendulumSwingUp: give hold_steps or hold_time, not both "
                f"(got hold_steps={hold_steps}, hold_time={hold_time})"
            )
        if hold_steps is None:
            seconds = HOLD_TIME if hold_time is None else float(hold_time)
            if seconds <= 0:
                raise ValueError(f"hold_time must be > 0 seconds, got {seconds}")
            hold_steps = math.ceil(seconds / dt - 1e-9)
        if hold_steps < 1:
            raise ValueError(f"hold_steps must be >= 1, got {hold_steps}")
        self.dt = float(dt)
        self.action_noise_std = float(action_noise_std)
        self.hold_steps = int(hold_steps)
        self.upright_tol = float(upright_tol)
        self._upright_steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Hanging near rest; ``options={"state": (theta, theta_dot)}`` forces the start state."""
        super().reset(seed=seed)  # seeds np_random; its random state is replaced below
        if options is not None and "state" in options:
            theta, theta_dot = (float(x) for x in options["state"])
        else:
            theta = np.pi + self.np_random.uniform(-INIT_ANGLE_TOL, INIT_ANGLE_TOL)
            theta_dot = self.np_random.uniform(-INIT_SPEED_TOL, INIT_SPEED_TOL)
        self.state = np.array([theta, theta_dot], dtype=np.float64)
        self._upright_steps = 0
        return self._get_obs(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Pendulum's step on ``clip(action + noise, -2, 2)``; adds the success info."""
        u = np.asarray(action, dtype=np.float64).reshape(-1)
        if u.shape != (1,):
            raise ValueError(f"PendulumSwingUp: expected an action of shape (1,), got {u.shape}")
        if self.action_noise_std > 0:
            u = u + self.action_noise_std * self.np_random.standard_normal(1)
        obs, reward, terminated, truncated, _ = super().step(
            np.clip(u, -self.max_torque, self.max_torque)
        )
        upright = abs(wrap_angle(float(self.state[0]))) < self.upright_tol
        self._upright_steps = self._upright_steps + 1 if upright else 0
        return obs, float(reward), terminated, truncated, self._info()

    @property
    def upright_steps(self) -> int:
        """Consecutive upright steps up to now."""
        return self._upright_steps

    @property
    def swing_direction(self) -> int:
        """+1: the pole went over counter-clockwise, -1: clockwise, 0: theta within pi/2 of pi."""
        half_turns = int(np.rint((float(self.state[0]) - np.pi) / np.pi))
        return int(np.sign(half_turns))

    def _info(self) -> dict[str, Any]:
        return {
            "success": self._upright_steps >= self.hold_steps,
            "upright_steps": self._upright_steps,
            "swing_direction": self.swing_direction,
        }
