"""Naive asynchronous execution: switch to the new chunk the moment it arrives."""

from __future__ import annotations

from envactor.runtime.executors.base import EXECUTORS, ChunkExecutor


@EXECUTORS.register("naive_async")
class NaiveAsyncExecutor(ChunkExecutor):
    """After s actions, request a new chunk and keep executing the old one; when it arrives d
    steps later, jump to it, skipping its d stale actions (docs/chunking.md, "Executors"). If
    the old chunk runs out first (d > H - s), the last action is held."""

    name = "naive_async"
