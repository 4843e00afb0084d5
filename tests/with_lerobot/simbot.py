"""SimBot: a test-only LeRobot ``Robot`` backed by a simulated pendulum, for ``envactor run
--robot-module`` without hardware.

It speaks LeRobot's robot API exactly as a motor arm does: named float features
(``pendulum.cos``, ``pendulum.sin``, ``pendulum.vel``; action ``pendulum.torque``) and one camera
(``front``, an RGB image of the pole drawn from its angle). The physics is envactor's threaded
``SimulatedRobot`` on ``envactor/PendulumSwingUp-v0`` (or another pendulum task), stepped at
``hz`` in wall-clock time from ``connect()`` to ``disconnect()``, holding the last action sent
like a servo. Every instance is kept in ``SimBot.instances`` with what it was sent, so tests can
check the action dicts and the disconnects. Options (``--robot-opt``): ``task``, ``hz``,
``camera``, ``seed``, ``fail_after_reads`` (``get_observation`` raises after that many reads),
``read_delay_s`` (each read blocks that long, like a saturated bus).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from lerobot.robots import Robot, RobotConfig
from lerobot.utils.errors import DeviceAlreadyConnectedError, DeviceNotConnectedError

import envactor.envs  # noqa: F401  (registers the pendulum tasks)
from envactor.runtime.realtime.robot import SimulatedRobot

MOTORS = ("pendulum.cos", "pendulum.sin", "pendulum.vel")
ACTION = "pendulum.torque"
CAMERA, CAMERA_SHAPE = "front", (48, 64, 3)


def _calibration_dir() -> Path:
    return Path(tempfile.gettempdir()) / "envactor-simbot-calibration"


@RobotConfig.register_subclass("envactor_simbot")
@dataclass
class SimBotConfig(RobotConfig):
    task: str = "envactor/PendulumSwingUp-v0"
    hz: float = 50.0
    camera: bool = True
    seed: int = 0
    fail_after_reads: int = 0  # 0: never
    read_delay_s: float = 0.0
    calibration_dir: Path | None = field(default_factory=_calibration_dir)


def draw_pole(cos: float, sin: float) -> np.ndarray:
    """The camera image: a white pole from the pivot at angle theta (0 up) on grey."""
    h, w, _ = CAMERA_SHAPE
    img = np.full(CAMERA_SHAPE, 40, np.uint8)
    r = np.linspace(0.0, 0.45 * h, 24)
    ys = np.clip((h / 2 - r * cos).astype(int), 0, h - 1)
    xs = np.clip((w / 2 + r * sin).astype(int), 0, w - 1)
    img[ys, xs] = 255
    return img


class SimBot(Robot):
    """See the module docstring."""

    config_class = SimBotConfig
    name = "envactor_simbot"
    instances: ClassVar[list[SimBot]] = []

    def __init__(self, config: SimBotConfig) -> None:
        super().__init__(config)
        self.config = config
        self.sim: SimulatedRobot | None = None
        self.sent: list[dict[str, float]] = []
        self.reads = 0
        self.connects = 0
        self.disconnects = 0
        SimBot.instances.append(self)

    @property
    def observation_features(self) -> dict[str, Any]:
        feats: dict[str, Any] = dict.fromkeys(MOTORS, float)
        if self.config.camera:
            feats[CAMERA] = CAMERA_SHAPE
        return feats

    @property
    def action_features(self) -> dict[str, Any]:
        return {ACTION: float}

    @property
    def is_connected(self) -> bool:
        return self.sim is not None

    @property
    def is_calibrated(self) -> bool:
        return True

    def connect(self, calibrate: bool = True) -> None:
        if self.is_connected:
            raise DeviceAlreadyConnectedError(f"{self} already connected")
        env = gym.make(self.config.task)
        self.sim = SimulatedRobot(env, self.config.hz, threaded=True, seed=self.config.seed)
        self.sim.connect()
        self.connects += 1

    def calibrate(self) -> None:
        return None

    def configure(self) -> None:
        return None

    def get_observation(self) -> dict[str, Any]:
        if self.sim is None:
            raise DeviceNotConnectedError(f"{self} is not connected")
        self.reads += 1
        if self.config.read_delay_s:
            time.sleep(self.config.read_delay_s)
        if self.config.fail_after_reads and self.reads > self.config.fail_after_reads:
            raise ConnectionError(f"{self}: lost the bus after {self.reads - 1} reads")
        state = self.sim.read()["observation.state"]
        obs: dict[str, Any] = {m: float(v) for m, v in zip(MOTORS, state)}
        if self.config.camera:
            obs[CAMERA] = draw_pole(float(state[0]), float(state[1]))
        return obs

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        if self.sim is None:
            raise DeviceNotConnectedError(f"{self} is not connected")
        if set(action) != {ACTION}:
            raise ValueError(f"{self}: expected the action keys {[ACTION]}, got {sorted(action)}")
        self.sim.write(np.array([action[ACTION]], np.float32))
        self.sent.append(dict(action))
        return action

    def disconnect(self) -> None:
        if self.sim is None:
            raise DeviceNotConnectedError(f"{self} is not connected")
        self.sim.disconnect()
        self.sim.env.close()
        self.sim = None
        self.disconnects += 1
