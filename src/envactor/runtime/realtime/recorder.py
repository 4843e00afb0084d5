"""Record a real-time run as a LeRobot v3.0 dataset, written on a thread of its own.

:class:`DatasetRecorder` is a controller's ``on_step`` hook: the control thread only puts each
:class:`~envactor.runtime.realtime.steps.StepRecord` on a queue; the recorder's thread turns
it into a dataset frame (camera images encoded as they come, through
``LeRobotWriter.stream_episode``) so a long run never holds its video in memory. Every step
becomes one frame:

==========================  ====================================================================
column                      what it holds
==========================  ====================================================================
``observation.*``           the observation read at the step (cameras as video)
``action``                  the action the robot ran (what it reported, else what was written)
``envactor.proposed``       the action before the safety filter
``envactor.chunk``          the chunk the action came from (-1 held, -2 the safe action)
``envactor.chunk_index``    its index in that chunk
``envactor.weight_version`` the weights that produced that chunk
``envactor.time_s``         seconds since the control loop started, when the step began
``envactor.safe_stop``      True for the step that wrote the safe action
``next.reward``             NaN (not measured on a robot), ``next.done`` True on an episode's end
==========================  ====================================================================

``timestamp`` is LeRobot's: ``frame_index / fps`` (so LeRobot's own timestamp check passes);
the measured time is ``envactor.time_s``. A dataset episode ends where the robot counts one
(``episodes`` of a simulated robot), at :meth:`end_episode` and at :meth:`close`. A failure
while writing stops the recording: the next step's hook raises it (the controller then makes
a safe stop) and :meth:`close` still publishes every frame written before it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from envactor.data.format import Feature
from envactor.data.writer import DatasetWriter
from envactor.runtime.realtime.steps import StepRecord

__all__ = ["RECORD_COLUMNS", "DatasetRecorder", "RecordingError", "observation_features"]

RECORD_COLUMNS = {
    "envactor.chunk": Feature((), "int64"),
    "envactor.chunk_index": Feature((), "int64"),
    "envactor.weight_version": Feature((), "int64"),
    "envactor.time_s": Feature((), "float64"),
    "envactor.safe_stop": Feature((), "bool"),
}
"""The per-step columns a recording adds beside observations and actions."""

_END, _CLOSE = "end", "close"


class RecordingError(RuntimeError):
    """Writing the recording failed (the message says at which step and why)."""


def observation_features(obs: Mapping[str, Any]) -> dict[str, Feature]:
    """Dataset features for an observation dict: every ``observation.*`` array, cameras
    (``observation.images.<name>`` or ``observation.image``, uint8 ``(H, W, 3)``) as video."""
    out: dict[str, Feature] = {}
    for key, value in obs.items():
        if not key.startswith("observation."):
            continue
        arr = np.asarray(value)
        camera = key == "observation.image" or key.startswith("observation.images.")
        if camera and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3:
            out[key] = Feature(tuple(arr.shape), "uint8")
        else:
            dtype = arr.dtype.name if arr.dtype.name in ("float64", "int64", "int32") else "float32"
            out[key] = Feature(tuple(arr.shape) or (1,), dtype)
    return out


class DatasetRecorder:
    """Write the steps of one or more controller runs to a new LeRobot v3.0 dataset at ``root``.

    Args:
        root: the dataset folder to create (refused if it exists, unless ``overwrite``).
        observation: the observation features to record (``observation_features`` of a
            sample, or a robot's own declaration with its motor names).
        action: the ``action`` feature (shape ``(A,)``, float32; its names if known).
        fps: the control rate, an integer (LeRobot datasets have integer fps).
        task: the task text of every episode; ``robot_type``: ``info.json``'s robot type.
        overwrite: replace an existing dataset at ``root`` when closing.
        codec: the cameras' video codec (H.264 by default).
    """

    def __init__(
        self,
        root: str | Path,
        observation: Mapping[str, Feature],
        action: Feature,
        fps: int,
        *,
        task: str = "",
        robot_type: str | None = None,
        overwrite: bool = False,
        **writer_options: Any,
    ) -> None:
        features: dict[str, Any] = dict(observation)
        features["action"] = action
        features["envactor.proposed"] = Feature(action.shape, "float32")
        features.update(RECORD_COLUMNS)
        self.writer = DatasetWriter(
            root, features, fps, task=task, robot_type=robot_type, overwrite=overwrite,
            **writer_options,
        )  # fmt: skip
        self.root = Path(root)
        self.observation_keys = list(observation)
        self.frames = 0
        self.episodes = 0
        self.backlog_max = 0
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue[StepRecord | str] = queue.SimpleQueue()
        self._held: StepRecord | None = None  # a frame waits: a run's last is its episode's end
        self._episodes_seen = 0
        self._stream: Any = None
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="envactor-recorder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control thread
    def __call__(self, record: StepRecord) -> None:
        """The controller's ``on_step`` hook: queue the step (raises once writing failed)."""
        if self.error is not None:
            raise RecordingError(f"recording to {self.root} failed: {self.error}") from self.error
        self._queue.put(record)
        self.backlog_max = max(self.backlog_max, self._queue.qsize())

    def end_episode(self) -> None:
        """End the current dataset episode (the next step starts a new one)."""
        self._queue.put(_END)

    def close(self) -> Path | None:
        """Write what is queued, publish the dataset; its path (None when no step was
        recorded: nothing is written). A failure while writing is raised as
        :class:`RecordingError` after the frames before it are published."""
        if self._closed:
            return self.root if self.frames else None
        self._closed = True
        self._queue.put(_CLOSE)
        self._thread.join()
        try:
            if self._stream is not None:
                self._stream.close()
            if self.writer.episodes:
                self.writer.close()
            else:
                self.writer.abort()
        except BaseException:
            self.writer.abort()
            raise
        if self.error is not None:
            raise RecordingError(
                f"recording to {self.root} stopped after {self.frames} frames: {self.error}"
            ) from self.error
        return self.root if self.frames else None

    def abort(self) -> None:
        """Discard the recording (nothing is published)."""
        self._closed = True
        self._queue.put(_CLOSE)
        self._thread.join()
        self.writer.abort()

    # ------------------------------------------------------------------ writer thread
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if self.error is not None and item != _CLOSE:
                continue  # failed: drop the rest, keep what was written
            try:
                if item == _CLOSE:
                    self._flush(final=True)
                    return
                if item == _END:
                    self._flush(final=True)
                    continue
                assert isinstance(item, StepRecord)
                self._flush(final=False)
                self._held = item
            except BaseException as exc:
                self.error = exc
                if item == _CLOSE:
                    return

    def _flush(self, *, final: bool) -> None:
        """Write the held frame: the last of its episode when its write finished one of the
        robot's episodes (its count went up) or when ``final``; then end that episode."""
        rec, self._held = self._held, None
        done = final
        if rec is not None:
            done = done or rec.episodes > self._episodes_seen
            self._episodes_seen = rec.episodes
            if self._stream is None:
                self._stream = self.writer.stream_episode()
            self._stream.add(self._frame(rec, done))
            self.frames += 1
        if done and self._stream is not None:
            if self._stream.close() is not None:
                self.episodes += 1
            self._stream = None

    def _frame(self, rec: StepRecord, done: bool) -> dict[str, Any]:
        frame: dict[str, Any] = {}
        for key in self.observation_keys:
            if key not in rec.obs:
                raise RecordingError(
                    f"step {rec.step}: the observation has no {key!r} (it has "
                    f"{sorted(rec.obs)}); the recording declared {self.observation_keys}"
                )
            frame[key] = np.asarray(rec.obs[key]).reshape(self.writer.declared()[key].shape)
        frame["action"] = np.asarray(rec.commanded, np.float32).reshape(-1)
        frame["envactor.proposed"] = np.asarray(rec.proposed, np.float32).reshape(-1)
        frame["envactor.chunk"], frame["envactor.chunk_index"] = rec.source
        frame["envactor.weight_version"] = rec.weight_version
        frame["envactor.time_s"] = rec.time_s
        frame["envactor.safe_stop"] = rec.safe_stop
        frame["next.reward"] = np.nan
        frame["next.done"] = done
        return frame
