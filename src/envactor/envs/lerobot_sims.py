"""LeRobot's simulation benchmarks (gym-pusht, gym-aloha, gym-xarm) with LeRobot's feature names.

Their gymnasium ids live in namespaces named after their packages (``gym_pusht/PushT-v0``); the
package registers them when imported. ``make_env`` imports it on first use and wraps the env so
its observations carry the names LeRobot's policies and datasets use:

    pixels (H, W, 3)              -> observation.image             (uint8, channels last)
    pixels {camera: (H, W, 3)}    -> observation.images.<camera>
    agent_pos                     -> observation.state             (float32)
    environment_state             -> observation.environment_state (float32)

and ``info["success"]`` mirrors the env's ``is_success``, which envactor's episode metrics read.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["LEROBOT_SIM_PACKAGES", "LeRobotNaming", "is_lerobot_sim", "make_env", "register"]

# namespace -> (package, extra keywords gym.make gets unless given)
LEROBOT_SIM_PACKAGES: dict[str, tuple[str, dict[str, Any]]] = {
    "gym_pusht": ("gym_pusht", {"obs_type": "pixels_agent_pos", "render_mode": "rgb_array"}),
    "gym_aloha": ("gym_aloha", {"obs_type": "pixels_agent_pos"}),
    "gym_xarm": ("gym_xarm", {"obs_type": "pixels_agent_pos"}),
}


def _namespace(env_id: str) -> str | None:
    return env_id.split("/", 1)[0] if "/" in env_id else None


def is_lerobot_sim(env_id: str) -> bool:
    """Whether ``env_id`` belongs to one of LeRobot's simulation packages."""
    return _namespace(env_id) in LEROBOT_SIM_PACKAGES


def register(env_id: str) -> None:
    """Import the package that registers ``env_id`` (a clear error when it is not installed)."""
    ns = _namespace(env_id)
    if ns not in LEROBOT_SIM_PACKAGES:
        return
    package = LEROBOT_SIM_PACKAGES[ns][0]
    try:
        importlib.import_module(package)
    except ImportError as e:
        pip_name = package.replace("_", "-")
        raise ImportError(
            f"{env_id} needs the {pip_name} package (LeRobot's simulation benchmark): "
            f"pip install {pip_name}"
        ) from e


class LeRobotNaming(gym.ObservationWrapper):
    """Rename a LeRobot simulation env's observations to LeRobot's feature names (see module)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict):
            raise ValueError(
                f"{env.spec.id if env.spec else env}: expected a dict observation space "
                f"(pixels / agent_pos / environment_state), found {space}; make it with an "
                "obs_type that includes agent_pos"
            )
        spaces: dict[str, gym.Space] = {}
        for key, sub in space.spaces.items():
            if key == "pixels" and isinstance(sub, gym.spaces.Dict):
                for cam, cam_space in sub.spaces.items():
                    spaces[f"observation.images.{cam}"] = cam_space
            elif key == "pixels":
                spaces["observation.image"] = sub
            elif key == "agent_pos":
                spaces["observation.state"] = _float32(sub)
            elif key == "environment_state":
                spaces["observation.environment_state"] = _float32(sub)
            else:
                spaces[f"observation.{key}"] = sub
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        """The renamed observation (images stay uint8 HWC, vectors become float32)."""
        out: dict[str, Any] = {}
        for key, value in observation.items():
            if key == "pixels" and isinstance(value, dict):
                for cam, image in value.items():
                    out[f"observation.images.{cam}"] = image
            elif key == "pixels":
                out["observation.image"] = value
            elif key == "agent_pos":
                out["observation.state"] = np.asarray(value, dtype=np.float32)
            elif key == "environment_state":
                out["observation.environment_state"] = np.asarray(value, dtype=np.float32)
            else:
                out[f"observation.{key}"] = value
        return out

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        if "is_success" in info and "success" not in info:
            info = {**info, "success": bool(info["is_success"])}
        return obs, reward, terminated, truncated, info


def _float32(space: gym.Space) -> gym.Space:
    if isinstance(space, gym.spaces.Box):
        lo, hi = space.low.astype(np.float32), space.high.astype(np.float32)
        return gym.spaces.Box(lo, hi, space.shape, np.float32)
    return space


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make(env_id, **kwargs)``; a LeRobot simulation is wrapped in ``LeRobotNaming``
    (with LeRobot's usual ``obs_type`` unless ``kwargs`` sets it)."""
    if not is_lerobot_sim(env_id):
        return gym.make(env_id, **kwargs)
    register(env_id)
    defaults = LEROBOT_SIM_PACKAGES[_namespace(env_id) or ""][1]
    return LeRobotNaming(gym.make(env_id, **{**defaults, **kwargs}))
