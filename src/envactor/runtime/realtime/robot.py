"""What the real-time controller drives: the :class:`Robot` interface and a simulated robot.

A robot is read and written by the control loop only (one thread), so implementations need no
locking of their own unless they run threads themselves (as :class:`SimulatedRobot` does in
its threaded mode).
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np

from envactor.runtime.env_batch import ObsAdapter, default_obs_adapter
from envactor.runtime.realtime.clock import Clock

TIMESTAMP_KEY = "timestamp"
"""Optional key of an observation: when it was sensed, in seconds of the controller's clock
(``time.monotonic()`` unless the controller runs on a virtual clock)."""


class Robot(ABC):
    """The hardware side of a real-time controller.

    ``read()`` returns the latest observation as ``{"observation.<...>": array}`` plus, when the
    robot knows it, ``"timestamp"`` (the controller clock's seconds when it was sensed; the
    controller's stale-observation check needs it). ``write(action)`` commands one action; the
    robot keeps executing the last command until the next one (zero-order hold). A robot that
    changes the command (its own limits) returns what it actually commanded, which a recording
    stores; None means "as given". ``connect()``/``disconnect()`` bracket one controller run
    (default: nothing to do). A robot that counts finished episodes in an ``episodes``
    attribute (as :class:`SimulatedRobot` does) gets a recording split at its episode ends.
    """

    action_space: gym.spaces.Box

    @abstractmethod
    def read(self) -> dict[str, Any]:
        """The latest observation (see the class docstring)."""

    @abstractmethod
    def write(self, action: np.ndarray) -> np.ndarray | None:
        """Command ``action`` (shape ``action_space.shape``, already within its bounds); the
        action actually commanded if the robot changed it, else None."""

    def connect(self) -> None:
        """Called when a controller run starts."""
        return None

    def disconnect(self) -> None:
        """Called when a controller run ends (also after a safe stop)."""
        return None

    @property
    def done(self) -> bool:
        """True when the robot cannot go on (the controller then stops with ``robot_done``)."""
        return False


class SimulatedRobot(Robot):
    """A gymnasium env advanced in wall-clock time at ``hz``, one ``env.step`` per period.

    Two clocks:

    * ``threaded=False`` (default): driven by the control loop; every ``write`` is one
      ``env.step``. Deterministic (``executed`` equals what the controller wrote) but the world
      waits when the controller is late; since the world only moves on a write, an observation
      is always current and ``read()`` stamps it with the time of the read.
    * ``threaded=True``: a physics thread, started by ``connect()``, ticks every ``1 / hz``
      seconds and steps the env with the latest written action (zero-order hold, like hardware;
      before the first write the robot rests and only its sensor timestamp advances). The
      world does not wait for a late controller, so a missed deadline repeats an action; the
      timestamp is that of the last physics tick, so a stalled simulation reads as stale.

    Finished episodes are reset at once (``episodes`` counts them, ``returns`` holds their
    returns) unless ``reset_on_done=False``, in which case ``done`` becomes True.

    Args:
        env: any gymnasium env with a ``Box`` action space.
        hz: the control rate one env step stands for.
        seed: seed of the first reset (later resets continue the env's generator).
        obs_adapter: env observation -> ``{"observation.*": array}`` (default: an array becomes
            ``observation.state``).
        clock: where timestamps come from (default: the wall clock); give a controller with a
            :class:`~envactor.runtime.realtime.clock.VirtualClock` the same clock
            (``threaded=False`` only).
    """

    def __init__(
        self,
        env: gym.Env,
        hz: float,
        *,
        threaded: bool = False,
        seed: int | None = 0,
        obs_adapter: ObsAdapter | None = None,
        reset_on_done: bool = True,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(env.action_space, gym.spaces.Box):
            raise TypeError(
                f"SimulatedRobot needs a gymnasium Box action space, got {env.action_space!r}"
            )
        if isinstance(hz, bool) or not (math.isfinite(hz) and hz > 0):
            raise ValueError(f"hz must be a finite number > 0, got {hz!r}")
        self.clock = clock or Clock()
        if threaded and self.clock.virtual:
            raise ValueError("a threaded SimulatedRobot runs on the wall clock, not a virtual one")
        self.env = env
        self.hz = float(hz)
        self.threaded = threaded
        self.action_space = env.action_space
        self.adapt = obs_adapter or default_obs_adapter
        self.reset_on_done = reset_on_done
        self.executed: list[np.ndarray] = []
        self.step_times: list[float] = []
        self.episodes = 0
        self.returns: list[float] = []
        self._return = 0.0
        self._done = False
        self._lock = threading.Lock()
        self._command: np.ndarray | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        obs, _ = env.reset(seed=seed)
        self._obs = self.adapt(obs)
        self._stamp = self.clock.now()

    # ------------------------------------------------------------------ Robot
    def read(self) -> dict[str, Any]:
        with self._lock:
            stamp = self._stamp if self.threaded else self.clock.now()
            return {**self._obs, TIMESTAMP_KEY: stamp}

    def write(self, action: np.ndarray) -> None:
        space = self.action_space
        a = np.asarray(action, dtype=space.dtype).reshape(space.shape)
        if not self.threaded:
            self._step(a)
            return None
        with self._lock:
            self._command = a.copy()
        return None

    def connect(self) -> None:
        if self.threaded and self._thread is None:
            self._stop.clear()
            self._stamp = time.monotonic()
            self._thread = threading.Thread(
                target=self._physics, name="envactor-sim-robot", daemon=True
            )
            self._thread.start()

    def disconnect(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=2.0)

    @property
    def done(self) -> bool:
        return self._done

    # ------------------------------------------------------------------ simulation
    def _step(self, a: np.ndarray) -> None:
        if self._done:
            return
        obs, reward, term, trunc, _ = self.env.step(a)
        now = self.clock.now()
        self._return += float(reward)
        adapted = self.adapt(obs)
        if term or trunc:
            self.episodes += 1
            self.returns.append(self._return)
            self._return = 0.0
            if self.reset_on_done:
                adapted = self.adapt(self.env.reset()[0])
            else:
                self._done = True
        with self._lock:
            self._obs, self._stamp = adapted, now
            self.executed.append(a.copy())
            self.step_times.append(now)

    def _physics(self) -> None:
        period = 1.0 / self.hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                command = self._command
            if command is not None:
                self._step(command)
            else:
                with self._lock:
                    self._stamp = time.monotonic()
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind: keep the grid, drop the missed steps
                next_t += period * (int(-delay / period) + 1)
                delay = next_t - time.monotonic()
            self._stop.wait(max(0.0, delay))


class DryRun(Robot):
    """``robot`` read as usual but never written: the controller runs the policy at the
    control rate and its safety filter, and the actions go nowhere (``would_be`` counts them).
    The first thing to run on real hardware. Everything else is ``robot``'s."""

    def __init__(self, robot: Robot) -> None:
        self.inner = robot
        self.action_space = robot.action_space
        self.would_be = 0

    def read(self) -> dict[str, Any]:
        return self.inner.read()

    def write(self, action: np.ndarray) -> None:
        self.would_be += 1
        return None

    def connect(self) -> None:
        self.inner.connect()

    def disconnect(self) -> None:
        self.inner.disconnect()

    @property
    def done(self) -> bool:
        return self.inner.done

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copying): never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)
