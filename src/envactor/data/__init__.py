"""Demonstration datasets: Parquet episodes on disk, chunk windows for training, stats.

``LeRobotDataset`` reads LeRobot v3.0 and v2.1 datasets (cameras as MP4 video, decoded with
PyAV); ``LeRobotWriter`` writes v3.0. pyarrow and PyAV (``pip install envactor[data]``) are
imported only when a dataset is read or written.
"""

from envactor.data.dataset import EpisodeDataset
from envactor.data.format import CODEBASE_VERSION, DatasetError, Feature
from envactor.data.lerobot_dataset import LeRobotDataset
from envactor.data.lerobot_writer import LeRobotWriter
from envactor.data.open import open_dataset
from envactor.data.stats import dataset_stats
from envactor.data.windows import ChunkWindows
from envactor.data.writer import DatasetWriter

__all__ = [
    "CODEBASE_VERSION",
    "ChunkWindows",
    "DatasetError",
    "DatasetWriter",
    "EpisodeDataset",
    "Feature",
    "LeRobotDataset",
    "LeRobotWriter",
    "dataset_stats",
    "open_dataset",
]
