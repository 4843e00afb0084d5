"""An episode written frame by frame into a LeRobot v3.0 dataset (``LeRobotWriter.stream_episode``).

For a recording whose length is not known in advance: camera frames are encoded as they come
(no episode's video is held in memory), the numeric columns are kept until the episode closes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from envactor.data.format import DatasetError

if TYPE_CHECKING:
    from envactor.data.lerobot_writer import LeRobotWriter

__all__ = ["EpisodeStream"]


class EpisodeStream:
    """One episode given frame by frame to a :class:`LeRobotWriter` (its
    :meth:`~LeRobotWriter.stream_episode`).

    :meth:`add` checks a frame ``{key: array}`` (every declared feature, one frame's shape),
    encodes its camera images at once and keeps its numeric values; :meth:`close` writes the
    episode's rows (an episode without frames writes nothing). Not thread-safe: one thread
    adds.
    """

    def __init__(self, writer: LeRobotWriter, task: str | None) -> None:
        self.writer, self.task = writer, task
        self.index = len(writer.episodes)
        self.frames = 0
        self._rows: dict[str, list[np.ndarray]] = {k: [] for k in writer.features}
        self._starts: dict[str, float] = {}

    def add(self, frame: Mapping[str, Any]) -> None:
        """Append one frame ``{key: array of the feature's shape}``."""
        w = self.writer
        if w._stream is not self:
            raise DatasetError(f"{w.root}: episode {self.index}'s stream is closed")
        declared = w.declared()
        if set(frame) != set(declared):
            unknown = sorted(set(frame) - set(declared))
            missing = sorted(set(declared) - set(frame))
            raise DatasetError(
                f"episode {self.index}, frame {self.frames}: keys must be {sorted(declared)}; "
                f"unknown {unknown}, missing {missing}"
            )
        where = f"episode {self.index}, frame {self.frames}"
        checked = {
            k: w._checked(where, k, np.asarray(v)[None], declared[k]) for k, v in frame.items()
        }
        for key in w.cameras:
            if key not in self._starts:
                self._starts[key] = w._camera_begin(key)
            w._camera_add(key, checked[key])
        for key in self._rows:
            self._rows[key].append(checked[key])
        self.frames += 1

    def close(self) -> int | None:
        """Write the episode's rows; its index (None when it had no frames)."""
        w = self.writer
        if w._stream is not self:
            return None if self.frames == 0 else self.index
        w._stream = None
        if self.frames == 0:
            return None
        arrays = {k: np.concatenate(v) for k, v in self._rows.items()}
        spans = {k: w._camera_span(k, start) for k, start in self._starts.items()}
        return w._commit(arrays, self.frames, self.task, spans)
