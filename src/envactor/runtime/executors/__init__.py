"""Chunk executors, one small class per strategy, registered by name in ``EXECUTORS``."""

from envactor.runtime.executors import guided, naive_async, sync, temporal_ensemble  # noqa: F401
from envactor.runtime.executors.base import EXECUTORS, ChunkExecutor, EnvState, make_executor

__all__ = ["EXECUTORS", "ChunkExecutor", "EnvState", "make_executor"]
