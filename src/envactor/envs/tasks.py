"""The embedded tasks: gymnasium ids, how to make them, their experts and their shapes.

``register_tasks()`` registers every ``envactor/...`` id with gymnasium (idempotent; the MuJoCo
task is registered by entry-point string, so MuJoCo is imported only when that env is made).
``task_spec(env_id)`` is what a trainer or a demo needs to know about a task.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

CONFIG_DIR = Path(__file__).parent / "configs"
STATE_KEY = "observation.state"


@dataclass(frozen=True)
class Task:
    """One embedded task."""

    env_id: str
    entry_point: str
    expert: str
    state_dim: int
    action_dim: int
    control_hz: float
    max_episode_steps: int
    success: str
    expert_yaml: str | None = None
    """File name of the expert's YAML in ``configs/``; None: ``<expert>.yaml``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor keywords the id is registered with (``gym.make`` keywords override them)."""

    @property
    def expert_config(self) -> Path:
        """The expert's policy YAML for this task (its control rate matches the task's)."""
        return CONFIG_DIR / (self.expert_yaml or f"{self.expert}.yaml")

    def spec(self) -> dict[str, Any]:
        """Plain-dict description (see :func:`task_spec`)."""
        return {
            "env_id": self.env_id,
            "expert": self.expert,
            "expert_config": str(self.expert_config),
            "observation": {STATE_KEY: {"shape": [self.state_dim], "dtype": "float32"}},
            "action_dim": self.action_dim,
            "control_hz": self.control_hz,
            "max_episode_steps": self.max_episode_steps,
            "success": self.success,
        }


TASKS: dict[str, Task] = {
    t.env_id: t
    for t in (
        Task(
            env_id="envactor/PendulumSwingUp-v0",
            entry_point="envactor.envs.pendulum:PendulumSwingUpEnv",
            expert="pendulum_expert",
            state_dim=3,
            action_dim=1,
            control_hz=20.0,
            max_episode_steps=200,
            success="|wrap(theta)| < 0.3 rad on each of the last 30 steps (1.5 s)",
        ),
        Task(
            env_id="envactor/PendulumSwingUp50-v0",
            entry_point="envactor.envs.pendulum:PendulumSwingUpEnv",
            expert="pendulum_expert",
            state_dim=3,
            action_dim=1,
            control_hz=50.0,
            max_episode_steps=400,
            success="|wrap(theta)| < 0.3 rad on each of the last 75 steps (1.5 s)",
            expert_yaml="pendulum_expert_50hz.yaml",
            kwargs={"dt": 0.02},
        ),
        Task(
            env_id="envactor/ReacherReach-v0",
            entry_point="envactor.envs.mujoco_reach:ReacherReachEnv",
            expert="reacher_expert",
            state_dim=10,
            action_dim=2,
            control_hz=50.0,
            max_episode_steps=50,
            success="|fingertip - target| < 0.02 m at the final step",
        ),
    )
}


def register_tasks() -> None:
    """Register every embedded task with gymnasium; ids already registered are left alone."""
    for task in TASKS.values():
        if task.env_id not in gym.registry:
            gym.register(
                id=task.env_id,
                entry_point=task.entry_point,
                max_episode_steps=task.max_episode_steps,
                kwargs=dict(task.kwargs),
            )


def task_spec(env_id: str) -> dict[str, Any]:
    """What a trainer or demo needs about task ``env_id``.

    Keys: ``env_id``, ``expert`` (registered policy name), ``expert_config`` (its YAML path),
    ``observation`` (``{key: {"shape", "dtype"}}``), ``action_dim``, ``control_hz`` (1/dt),
    ``max_episode_steps`` (default episode length T) and ``success`` (the criterion in words).
    """
    task = TASKS.get(env_id)
    if task is None:
        close = difflib.get_close_matches(env_id, list(TASKS), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown envactor task {env_id!r}; known tasks: {sorted(TASKS)}{hint}")
    return task.spec()


class UnknownEnvError(ValueError):
    """A gymnasium env id that is not registered (the message names the closest ids)."""


def check_env_id(env_id: str) -> None:
    """Raise ``UnknownEnvError`` unless gymnasium can make ``env_id``.

    Unversioned ids (``Pendulum``) pass when some version is registered, as ``gym.make``
    accepts them; ``module:Id`` ids are left to ``gym.make`` (it imports the module first).
    """
    register_tasks()
    from envactor.envs.lerobot_sims import register as register_lerobot_sim

    register_lerobot_sim(env_id)  # gym_pusht/... : import its package (clear error if missing)
    if ":" in env_id or env_id in gym.registry:
        return
    from gymnasium.envs.registration import parse_env_id

    try:
        ns, name, version = parse_env_id(env_id)
    except gym.error.Error:
        ns, name, version = None, None, None
    unversioned = name is not None and version is None
    if unversioned and any(s.namespace == ns and s.name == name for s in gym.registry.values()):
        return
    ids = sorted(gym.registry)
    by_lower = {i.lower(): i for i in ids}
    close = difflib.get_close_matches(env_id.lower(), list(by_lower), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(by_lower[c]) for c in close) + "?"
    else:
        embedded = ", ".join(sorted(TASKS))
        hint = f"{len(ids)} ids are registered, among them the embedded tasks {embedded}"
    raise UnknownEnvError(f"unknown gymnasium env id {env_id!r}; {hint}")
