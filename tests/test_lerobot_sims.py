"""LeRobot-style simulation envs get LeRobot's feature names (pixels -> observation.image...)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from envactor.envs import check_env_id
from envactor.envs.lerobot_sims import LeRobotNaming, is_lerobot_sim, make_env


class _Sim(gym.Env):  # type: ignore[type-arg]
    """A stand-in with the observation layout of gym-pusht's pixels_agent_pos."""

    def __init__(self, cameras: bool = False) -> None:
        image = gym.spaces.Box(0, 255, (4, 6, 3), np.uint8)
        pixels: gym.Space = gym.spaces.Dict({"top": image, "wrist": image}) if cameras else image  # type: ignore[type-arg]
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": pixels,
                "agent_pos": gym.spaces.Box(0.0, 512.0, (2,), np.float64),
                "environment_state": gym.spaces.Box(-1.0, 1.0, (3,), np.float64),
            }
        )
        self.action_space = gym.spaces.Box(0.0, 512.0, (2,), np.float32)

    def _obs(self) -> Any:
        return self.observation_space.sample()

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:  # type: ignore[type-arg]
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:  # type: ignore[type-arg]
        return self._obs(), 0.5, True, False, {"is_success": True}


def test_renames_pixels_state_and_environment_state() -> None:
    env = LeRobotNaming(_Sim())
    assert set(env.observation_space.spaces) == {
        "observation.image",
        "observation.state",
        "observation.environment_state",
    }
    assert env.observation_space["observation.state"].dtype == np.float32
    obs, _ = env.reset(seed=0)
    assert (
        obs["observation.image"].shape == (4, 6, 3) and obs["observation.image"].dtype == np.uint8
    )
    assert obs["observation.state"].dtype == np.float32
    assert obs in env.observation_space
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["success"] is True and info["is_success"] is True


def test_several_cameras_become_observation_images() -> None:
    env = LeRobotNaming(_Sim(cameras=True))
    obs, _ = env.reset(seed=1)
    assert {"observation.images.top", "observation.images.wrist"} <= set(obs)


def test_lerobot_sim_ids_and_missing_package() -> None:
    assert is_lerobot_sim("gym_pusht/PushT-v0") and not is_lerobot_sim("Pendulum-v1")
    assert isinstance(make_env("Pendulum-v1").unwrapped, gym.Env)
    try:
        import gym_pusht  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install gym-pusht"):
            check_env_id("gym_pusht/PushT-v0")
    else:
        check_env_id("gym_pusht/PushT-v0")
        env = make_env("gym_pusht/PushT-v0")
        obs, _ = env.reset(seed=0)
        assert obs["observation.image"].shape == (96, 96, 3)
        assert obs["observation.state"].shape == (2,)
