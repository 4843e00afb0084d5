"""Running policies: chunk executors per env, the vector actor, evaluation (and, loaded on use,
the real-time controller and the policy server/client)."""

from envactor.runtime.executors import EXECUTORS, ChunkExecutor, make_executor

__all__ = ["EXECUTORS", "ChunkExecutor", "make_executor"]
