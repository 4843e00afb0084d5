"""Chunk executors, one small class per strategy, registered by name in ``EXECUTORS``."""

from envactor.runtime.executors import (  # noqa: F401
    bid,
    guided,
    naive_async,
    sync,
    temporal_ensemble,
)
from envactor.runtime.executors.base import EXECUTORS, ChunkExecutor, EnvState, make_executor

__all__ = ["EXECUTORS", "ChunkExecutor", "EnvState", "make_executor"]
