"""Batching across clients: requests that arrive within a short window run as ONE forward pass.

The batcher lives on the server's event loop; the forward passes run on one worker thread, so
the loop keeps accepting frames (and filling the next batch) while the policy computes. A lone
request (no other connection open) skips the batching window, and runs on the loop itself when
the worker thread is idle and the policy's last pass took at most ``INLINE_MAX_S``. Plain
requests are grouped together and guided requests with the same executor and settings together
(their per-robot remainders, d and s may differ: one GuidanceRequest holds them all); a group
runs through that executor's policy call, the one the vector actor and the real-time controller
use. A group that fails is re-run request by request, so one bad row only fails its own client.
A row whose actions are not all finite (NaN or inf, e.g. from an observation near the float32
limit) is answered with an ``InferenceError``, never with the actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from envactor.chunking.request import GuidanceRequest
from envactor.policy.base import Policy
from envactor.policy.boundary import ObservationError
from envactor.runtime.executors import ChunkExecutor, make_executor
from envactor.runtime.serving.requests import InferRequest, RequestError, all_finite

log = logging.getLogger("envactor.server")

Reply = dict[str, Any]
INLINE_MAX_S = 0.5e-3
"""A lone request runs on the event loop itself when the last forward pass took at most this
long (0.5 ms; the hand-off to the worker thread and back costs about 0.1 ms), so a cheap
policy's reply does not pay for the thread hop, and the loop is never held longer than that."""


def _deliver(
    fut: asyncio.Future[Reply], work: Future[list[Reply]], done: Callable[[], None]
) -> None:
    """Event loop: hand the one reply of a direct forward pass to its waiting request."""
    done()
    if fut.done():
        return
    exc = work.exception() if not work.cancelled() else asyncio.CancelledError()
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(work.result()[0])


def _on_loop(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Reply], work: Any, done: Callable[[], None]
) -> None:
    """Worker thread: schedule ``_deliver`` on the loop (gone once the server has stopped)."""
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
        loop.call_soon_threadsafe(_deliver, fut, work, done)


def _rows(rows: list[np.ndarray]) -> np.ndarray:
    """``np.stack(rows)``: a new, writable, C-contiguous batch (one row: a copy of it, 5x
    cheaper than ``np.stack`` for a lone request)."""
    return rows[0][None].copy() if len(rows) == 1 else np.stack(rows)


class Batcher:
    """Collects ``InferRequest``s and answers each with its reply dict.

    Args:
        policy: the served policy (only the worker thread calls it).
        executor: the single-thread executor forward passes run on.
        max_batch: at most this many requests per forward pass (1 turns batching off).
        timeout_s: how long the oldest waiting request may wait for company.
        capacity: optional callable -> how many requests could still arrive (the number of open
            connections: each has at most one request in flight); when all are waiting, the batch
            starts at once instead of sitting out the window.
    """

    def __init__(
        self,
        policy: Policy,
        executor: Executor,
        *,
        max_batch: int = 16,
        timeout_s: float = 0.002,
        capacity: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if timeout_s < 0:
            raise ValueError(f"batch timeout must be >= 0 seconds, got {timeout_s}")
        self.policy = policy
        self.executor = executor
        self.max_batch = int(max_batch)
        self.timeout_s = float(timeout_s)
        self.capacity = capacity
        self.forward_passes = 0
        self.requests = 0
        self._pending: deque[tuple[InferRequest, asyncio.Future[Reply]]] = deque()
        self._wakeup = asyncio.Event()
        self._executors: dict[str, ChunkExecutor] = {}
        self._jobs = 0  # worker-thread jobs submitted and not yet finished (event loop only)
        self.last_forward_s = float("inf")  # duration of the last forward pass (unknown yet)

    @property
    def executors(self) -> dict[str, ChunkExecutor]:
        """The executors made so far for guided requests, by name (their per-env state is
        released when a connection closes)."""
        return self._executors

    def submit(self, req: InferRequest) -> asyncio.Future[Reply]:
        """Queue ``req``; the future resolves to its reply (actions or an error).

        A request that could not get company (nothing else waiting and at most one open
        connection, or ``max_batch`` 1) skips the batching loop. It runs right here on the
        event loop when the worker thread is idle and the last forward pass took at most
        ``INLINE_MAX_S`` (a cheap policy: the thread hand-off would cost more than the pass),
        else it goes straight to the worker thread."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        if self._pending or not self._alone():
            self._pending.append((req, fut))
            self._wakeup.set()
            return fut
        if self._jobs == 0 and self.last_forward_s <= INLINE_MAX_S:
            fut.set_result(self.forward([req])[0])  # nothing else uses the policy meanwhile
            return fut
        self._jobs += 1
        work = self.executor.submit(self.forward, [req])
        work.add_done_callback(lambda w: _on_loop(loop, fut, w, self._job_done))
        return fut

    def answer_now(self, req: InferRequest) -> Reply | None:
        """The reply to ``req`` computed right here, when ``submit`` would run it inline on the
        event loop (alone, worker idle, cheap policy), without a future; None otherwise."""
        if self._pending or self._jobs or self.last_forward_s > INLINE_MAX_S or not self._alone():
            return None
        return self.forward([req])[0]

    def _alone(self) -> bool:
        """Whether no other request could join: batching off, or at most one connection."""
        return self.max_batch == 1 or (self.capacity is not None and self.capacity() <= 1)

    def _job_done(self) -> None:
        self._jobs -= 1

    async def on_worker(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker thread (every use of the policy goes through here or
        ``forward``), counted so that an inline forward pass never overlaps it."""
        self._jobs += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        finally:
            self._jobs -= 1

    def _full(self) -> bool:
        n = len(self._pending)
        if n >= self.max_batch:
            return True
        return self.capacity is not None and n >= self.capacity()

    async def run(self) -> None:
        """The batching loop (runs until cancelled)."""
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._pending[0][0].arrived + self.timeout_s
            while not self._full():
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            take = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            groups: dict[Any, list[tuple[InferRequest, asyncio.Future[Reply]]]] = {}
            for item in take:
                groups.setdefault(item[0].group, []).append(item)
            for items in groups.values():
                reqs = [r for r, _ in items]
                replies = await self.on_worker(functools.partial(self.forward, reqs))
                for (_, fut), reply in zip(items, replies):
                    if not fut.done():
                        fut.set_result(reply)

    # ------------------------------------------------------------------ worker thread
    def forward(self, reqs: list[InferRequest]) -> list[Reply]:
        """One forward pass for ``reqs`` (same group); a failing batch is retried row by row."""
        start = time.perf_counter()
        try:
            chunks = self._call(reqs)
        except Exception as exc:  # any policy failure becomes an error reply
            if len(reqs) > 1:
                return [self.forward([r])[0] for r in reqs]
            if not isinstance(exc, ObservationError):
                log.exception("inference failed for env %s", reqs[0].env_id)
            kind = "ObservationError" if isinstance(exc, ObservationError) else "InferenceError"
            return [RequestError(kind, f"{type(exc).__name__}: {exc}").reply()]
        infer_ms = (time.perf_counter() - start) * 1e3
        self.last_forward_s = infer_ms / 1e3
        self.forward_passes += 1
        self.requests += len(reqs)
        version = int(self.policy.weight_version)
        chunks = np.ascontiguousarray(chunks, dtype=np.float32)
        finite = all_finite(chunks)  # one check for the batch; row by row when it fails
        replies: list[Reply] = []
        for i, r in enumerate(reqs):
            actions = chunks[i]
            if not finite and not all_finite(actions):
                bad = int(np.size(actions) - np.isfinite(actions).sum())
                replies.append(
                    RequestError(
                        "InferenceError",
                        f"the policy returned non-finite actions ({bad} of {actions.size} values "
                        f"NaN or inf) for env {r.env_id}; expected finite actions (is the "
                        "observation far outside the policy's training range?)",
                    ).reply()
                )
                continue
            timing = {
                "infer_ms": infer_ms,
                "queue_ms": (start - r.arrived) * 1e3 if start > r.arrived else 0.0,
                "batch_size": len(reqs),
            }
            replies.append({"actions": actions, "server_timing": timing, "weight_version": version})
        return replies

    def _call(self, reqs: list[InferRequest]) -> np.ndarray:
        keys = list(self.policy.input_features)
        batch = {k: _rows([r.obs[k] for r in reqs]) for k in keys}
        ids = [r.env_id for r in reqs]
        guidance = [r.guidance for r in reqs if r.guidance is not None]
        if len(guidance) < len(reqs):
            return self.policy.predict(batch, env_ids=ids)
        executor = self._executors.get(reqs[0].executor)
        if executor is None:
            executor = self._executors[reqs[0].executor] = make_executor(
                reqs[0].executor, self.policy
            )
        return executor.infer(batch, ids, GuidanceRequest.concat(guidance))
