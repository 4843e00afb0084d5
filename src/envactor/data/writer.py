"""``DatasetWriter``: envactor's episodes as a LeRobot v3.0 dataset (see ``lerobot_writer``).

On top of ``LeRobotWriter`` it adds the two per-frame columns envactor's runtimes record, named
as LeRobot names them: ``next.reward`` (float32; NaN where not recorded) and ``next.done`` (bool;
by default True on an episode's last frame only).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from envactor.data.format import Feature
from envactor.data.lerobot_writer import LeRobotWriter

__all__ = ["DEFAULT_FEATURES", "DatasetWriter"]

DEFAULT_FEATURES = {"next.reward": Feature((), "float32"), "next.done": Feature((), "bool")}


class DatasetWriter(LeRobotWriter):
    """Write episodes to a new LeRobot v3.0 dataset; ``close()`` publishes it atomically.

    ``features`` maps column names to ``Feature``/``FeatureSpec``/``{"shape", "dtype"}`` and must
    include ``"action"``; ``next.reward`` and ``next.done`` are always present (given or default).
    An exception inside ``with DatasetWriter(...)`` (or ``abort()``) leaves ``root`` as it was.
    """

    def __init__(
        self,
        root: str | Path,
        features: Mapping[str, Any],
        fps: int,
        *,
        task: str = "",
        robot_type: str | None = None,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        feats = dict(features)
        for key, default in DEFAULT_FEATURES.items():
            feats.setdefault(key, default)
        super().__init__(
            root,
            feats,
            fps,
            task=task,
            robot_type=robot_type,
            overwrite=overwrite,
            nan_ok=("next.reward",),
            **options,
        )

    def add_episode(self, episode: Mapping[str, Any], *, task: str | None = None) -> int:
        """Write one episode ``{key: (T, *shape) array}``; returns its episode index."""
        ep = dict(episode)
        sizes = [np.shape(v)[0] for v in ep.values() if np.ndim(v) > 0]
        n = sizes[0] if sizes else 0
        ep.setdefault("next.reward", np.full(n, np.nan, dtype=np.float32))
        ep.setdefault("next.done", np.arange(n) == n - 1)
        return super().add_episode(ep, task=task)
