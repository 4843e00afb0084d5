"""Demonstration datasets: Parquet episodes on disk, chunk windows for training, stats.

pyarrow (``pip install envactor[data]``) is imported only when a dataset is read or written.
"""

from envactor.data.dataset import EpisodeDataset
from envactor.data.format import CODEBASE_VERSION, DatasetError, Feature
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
    "dataset_stats",
]
