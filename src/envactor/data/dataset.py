"""``EpisodeDataset``: envactor's dataset reader, the LeRobot v3.0 / v2.1 reader.

envactor writes LeRobot v3.0 datasets (``DatasetWriter``) and reads v3.0 and v2.1 ones, so a
dataset collected here opens in LeRobot and the other way round. Datasets in the older
``envactor-v1`` layout (envactor 0.1) are refused with a message saying to collect them again.
"""

from __future__ import annotations

from envactor.data.lerobot_dataset import LeRobotDataset

__all__ = ["EpisodeDataset"]

EpisodeDataset = LeRobotDataset
