"""The batcher's direct path: a request that cannot get company skips the batching loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from envactor.normalize import Normalizer
from envactor.policy.base import Policy
from envactor.runtime.serving.batching import Batcher
from envactor.runtime.serving.requests import InferRequest

S = "observation.state"


class Double(Policy):
    trainable = False

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        return (2.0 * obs[S][:, :1])[:, None, :].expand(-1, 2, 1)


def double() -> Double:
    modes = {S: "identity", "action": "identity"}
    feats = {S: {"shape": [3], "norm": "identity"}}
    return Double({}, Normalizer(modes, {}), input_features=feats, action_dim=1,
                  action_norm="identity", horizon=2, n_action_steps=2)  # fmt: skip


def request(env_id: int, x: float) -> InferRequest:
    return InferRequest(env_id, {S: np.array([x, 0.0, 0.0], np.float32)})


def test_lone_request_is_answered_without_the_batching_loop() -> None:
    async def main() -> tuple[dict[str, Any], int]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(double(), pool, max_batch=8, capacity=lambda: 1)
            reply = await asyncio.wait_for(batcher.submit(request(0, 1.5)), 5.0)  # no run()
            return reply, batcher.forward_passes

    reply, passes = asyncio.run(main())
    np.testing.assert_allclose(reply["actions"], [[3.0], [3.0]])
    assert reply["server_timing"]["batch_size"] == 1 and passes == 1


def test_requests_with_company_still_wait_for_the_batch() -> None:
    async def main() -> tuple[list[dict[str, Any]], bool]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(double(), pool, max_batch=8, timeout_s=5.0, capacity=lambda: 2)
            first = batcher.submit(request(0, 1.0))
            await asyncio.sleep(0.05)
            waited = not first.done()  # two connections open: the loop, not the direct path
            loop = asyncio.create_task(batcher.run())
            second = batcher.submit(request(1, 2.0))
            replies = await asyncio.wait_for(asyncio.gather(first, second), 5.0)
            loop.cancel()
            return list(replies), waited

    replies, waited = asyncio.run(main())
    assert waited
    assert [r["server_timing"]["batch_size"] for r in replies] == [2, 2]
    np.testing.assert_allclose([r["actions"][0, 0] for r in replies], [2.0, 4.0])


def test_cheap_lone_request_runs_inline_unless_the_worker_is_busy() -> None:
    async def main() -> tuple[bool, bool, bool, float]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(double(), pool, max_batch=8, capacity=lambda: 1)
            first = batcher.submit(request(0, 1.0))  # cost unknown: the worker thread
            unknown_inline = first.done()
            await asyncio.wait_for(first, 5.0)
            batcher.last_forward_s = 0.0  # a cheap policy (measured durations are noisy)
            cheap = batcher.submit(request(0, 2.0))
            cheap_inline = cheap.done()
            release = asyncio.Event()
            loop = asyncio.get_running_loop()
            gate = asyncio.run_coroutine_threadsafe(release.wait(), loop)
            busy = asyncio.create_task(batcher.on_worker(lambda: gate.result(5.0)))
            await asyncio.sleep(0.05)  # the worker thread now holds the policy
            batcher.last_forward_s = 0.0
            during = batcher.submit(request(0, 3.0))
            busy_inline = during.done()
            release.set()
            await asyncio.wait_for(busy, 5.0)
            reply = await asyncio.wait_for(during, 5.0)
            return unknown_inline, cheap_inline, busy_inline, float(reply["actions"][0, 0])

    unknown_inline, cheap_inline, busy_inline, action = asyncio.run(main())
    assert (unknown_inline, cheap_inline, busy_inline) == (False, True, False)
    assert action == 6.0
