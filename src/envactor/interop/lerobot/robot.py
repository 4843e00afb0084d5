"""Any LeRobot ``Robot`` (SO-100/101, Koch, ALOHA, LeKiwi, Reachy 2, ...) as a robot of
envactor's real-time controller.

:class:`LeRobotRobot` maps with LeRobot's own helpers: ``hw_to_dataset_features`` turns the
robot's ``observation_features`` into dataset features (its motor values, in the robot's order,
become ``observation.state``; each camera ``observation.images.<name>``) and
``build_dataset_frame`` builds each observation; an action goes out as the robot's named
action dict, in ``action_features`` order. :func:`check_robot_fits` compares a policy's
features with the robot's before anything connects. LeRobot is imported when an adapter is
made, not before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from envactor.data.format import Feature
from envactor.policy.base import Policy
from envactor.runtime.realtime.clock import Clock
from envactor.runtime.realtime.robot import TIMESTAMP_KEY, Robot

__all__ = ["LeRobotRobot", "RobotMismatchError", "check_robot_fits"]

OBS_PREFIX, ACTION_KEY = "observation", "action"


class RobotMismatchError(ValueError):
    """A policy's features and a robot's do not fit; the message lists both sides."""


def _import_dataset_utils() -> Any:
    try:
        from lerobot.datasets import utils
    except ModuleNotFoundError as exc:
        from envactor.interop.lerobot.checkpoint import INSTALL_HINT

        raise ModuleNotFoundError(
            f"a LeRobot robot needs LeRobot ({exc.name!r} is not installed): {INSTALL_HINT}"
        ) from None
    return utils


class LeRobotRobot(Robot):
    """A LeRobot ``Robot`` instance driven by :class:`RealtimeController`.

    Args:
        robot: the LeRobot robot (made from its config; not yet connected).
        low, high: the action bounds the controller's safety filter clips to (per dim;
            default unbounded: see ``safety.limits_from_stats``).
        clock: stamps each observation when it is read (LeRobot's robots give no time).

    Connection: :meth:`connect` connects the robot unless it already is (LeRobot's own
    calibration prompts run then); :meth:`disconnect` disconnects what this adapter connected.
    Inside :meth:`session` the connection is held across controller runs (episodes) and
    dropped when the block ends, however it ends.
    """

    def __init__(
        self,
        robot: Any,
        *,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
        clock: Clock | None = None,
    ) -> None:
        utils = _import_dataset_utils()
        self.robot = robot
        self.robot_type = str(getattr(robot, "name", type(robot).__name__))
        self._build_frame = utils.build_dataset_frame
        self.lerobot_features: dict[str, dict[str, Any]] = {
            **utils.hw_to_dataset_features(robot.observation_features, OBS_PREFIX, use_video=True),
            **utils.hw_to_dataset_features(robot.action_features, ACTION_KEY),
        }
        action = self.lerobot_features.get(ACTION_KEY)
        if action is None:
            raise RobotMismatchError(
                f"robot {self.robot_type!r} declares no numeric action features "
                f"(action_features: {dict(robot.action_features)})"
            )
        self.action_names: list[str] = list(action["names"])
        self.set_limits(low, high)
        self.clock = clock or Clock()
        self.sent = 0  # send_action calls
        self.connected_here = False
        self._held = False

    def set_limits(self, low: np.ndarray | None, high: np.ndarray | None) -> None:
        """The action bounds the safety filter clips to (None: unbounded on that side)."""
        adim = len(self.action_names)
        lo = np.full(adim, -np.inf) if low is None else np.asarray(low, np.float64).reshape(-1)
        hi = np.full(adim, np.inf) if high is None else np.asarray(high, np.float64).reshape(-1)
        if lo.shape != (adim,) or hi.shape != (adim,):
            raise ValueError(
                f"robot {self.robot_type!r} takes {adim} action values: low/high need {adim} "
                f"each, got {lo.shape[0]} and {hi.shape[0]}"
            )
        self.action_space = gym.spaces.Box(
            lo.astype(np.float32), hi.astype(np.float32), (adim,), np.float32
        )

    # ------------------------------------------------------------------ features
    def features(self) -> dict[str, Feature]:
        """The observation features this robot gives, as envactor dataset features (with the
        motor names of ``observation.state``)."""
        out: dict[str, Feature] = {}
        for key, spec in self.lerobot_features.items():
            if key == ACTION_KEY:
                continue
            if spec["dtype"] in ("video", "image"):
                out[key] = Feature(tuple(int(n) for n in spec["shape"]), "uint8")
            else:
                out[key] = Feature(tuple(spec["shape"]), "float32", tuple(spec["names"]))
        return out

    def action_feature(self) -> Feature:
        """The ``action`` feature, with the robot's action names."""
        return Feature((len(self.action_names),), "float32", tuple(self.action_names))

    # ------------------------------------------------------------------ Robot
    def read(self) -> dict[str, Any]:
        raw = self.robot.get_observation()
        frame: dict[str, Any] = self._build_frame(self.lerobot_features, raw, OBS_PREFIX)
        frame[TIMESTAMP_KEY] = self.clock.now()
        return frame

    def write(self, action: np.ndarray) -> np.ndarray | None:
        values = np.asarray(action, np.float64).reshape(-1)
        command = {name: float(values[i]) for i, name in enumerate(self.action_names)}
        sent = self.robot.send_action(command)
        self.sent += 1
        if isinstance(sent, Mapping) and all(n in sent for n in self.action_names):
            actual = np.array([float(sent[n]) for n in self.action_names], np.float32)
            if not np.array_equal(actual, values.astype(np.float32)):
                return actual  # the robot's own limits changed it
        return None

    def connect(self) -> None:
        if not self.robot.is_connected:
            self.robot.connect()
            self.connected_here = True

    def disconnect(self) -> None:
        if self._held or not self.connected_here:
            return
        self.connected_here = False
        if self.robot.is_connected:
            self.robot.disconnect()

    @contextlib.contextmanager
    def session(self) -> Iterator[LeRobotRobot]:
        """Connect once for several controller runs; disconnect when the block ends (normal
        end, exception, Ctrl-C)."""
        self.connect()
        self._held = True
        try:
            yield self
        finally:
            self._held = False
            self.disconnect()


def _describe(shape: tuple[int, ...], dtype: str, names: Any = None) -> str:
    text = f"{dtype} {tuple(shape)}"
    return f"{text} {list(names)}" if names else text


def check_robot_fits(policy: Policy, robot: LeRobotRobot) -> list[str]:
    """Raise :class:`RobotMismatchError` unless ``robot`` gives every input ``policy`` reads
    (same key, shape, and entry names where the policy knows them) and takes exactly its
    actions; the robot's features the policy does not read (they are recorded, not used)."""
    given = robot.features()
    problems: list[str] = []
    for key, spec in policy.input_features.items():
        have = given.get(key)
        want = _describe(spec.shape, spec.dtype, spec.names)
        if have is None:
            problems.append(f"{key}: the policy reads {want}, the robot gives no such feature")
            continue
        if tuple(have.shape) != tuple(spec.shape):
            problems.append(
                f"{key}: the policy reads {want}, the robot gives "
                f"{_describe(have.shape, have.dtype, have.names)}"
            )
        elif spec.names is not None and have.names is not None and have.names != spec.names:
            problems.append(
                f"{key}: the policy was trained on entries {list(spec.names)}, the robot gives "
                f"{list(have.names)} (order matters)"
            )
    adim, names = policy.params.action_dim, policy.params.action_names
    if len(robot.action_names) != adim:
        problems.append(
            f"action: the policy outputs {adim} values, the robot takes "
            f"{len(robot.action_names)} {robot.action_names}"
        )
    elif names is not None and tuple(names) != tuple(robot.action_names):
        problems.append(
            f"action: the policy was trained on {list(names)}, the robot takes "
            f"{robot.action_names} (order matters)"
        )
    if problems:
        policy_side = {k: _describe(s.shape, s.dtype) for k, s in policy.input_features.items()}
        robot_side = {k: _describe(f.shape, f.dtype) for k, f in given.items()}
        raise RobotMismatchError(
            f"robot {robot.robot_type!r} does not fit policy {policy.name!r}: "
            + "; ".join(problems)
            + f". Policy inputs: {policy_side}, action ({adim},). Robot gives: {robot_side}, "
            f"action ({len(robot.action_names)},) {robot.action_names}"
        )
    return sorted(set(given) - set(policy.input_features))
