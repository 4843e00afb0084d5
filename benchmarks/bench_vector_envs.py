"""SyncVectorEnv vs AsyncVectorEnv under the VectorActor on the MuJoCo task
(``envactor/ReacherReach-v0``), with a flow policy (random weights, 5 Euler steps per chunk).

With an asynchronous executor (``naive_async``, d = 2, s = 2) the policy call for the chunks
asked at a step is not needed before step + d, so with an AsyncVectorEnv it runs while the env
processes step (``overlap``); ``sync`` (d = 0) needs every chunk at once and cannot overlap.
``async, no overlap`` is the AsyncVectorEnv stepped and waited for before the policy call, to
show what the overlap itself gives. Wall-clock env-steps/s, best of interleaved repeats in this
one run.

    python benchmarks/bench_vector_envs.py [--envs 16] [--frame-skip 10] [--episodes 32]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gymnasium as gym
import torch

from envactor import build_policy
from envactor.runtime.actor import VectorActor
from envactor.runtime.env_batch import VectorEnvBatch, default_obs_adapter
from envactor.runtime.evaluate import make_vector_env

TASK = "envactor/ReacherReach-v0"


def flow_policy() -> Any:
    torch.manual_seed(0)
    return build_policy("flow", overrides=[
        "policy.params.input_features={observation.state: {shape: [10], norm: identity}}",
        "policy.params.action_dim=2", "policy.params.action_norm=identity",
        "model.components.encoder.in_dim=10",
    ])  # fmt: skip


def run(policy: Any, executor: str, delay: int, s: int, args: Any, mode: str) -> float:
    """Env-steps per second of one evaluation-sized run."""
    vec = make_vector_env(
        TASK, args.envs, vectorization="sync" if mode == "sync" else "async",
        frame_skip=args.frame_skip,
    )  # fmt: skip
    batch = VectorEnvBatch(vec, default_obs_adapter)
    if mode == "async, no overlap":
        batch.overlaps = False  # receive() steps and waits; the policy call never overlaps
    actor = VectorActor(policy, executor, delay=delay, n_action_steps=s)
    try:
        t0 = time.perf_counter()
        eps = actor.run(batch, args.episodes, seed=0)
        dt = time.perf_counter() - t0
    finally:
        vec.close()
    return sum(m.length for m in eps) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--frame-skip", type=int, default=10, help="MuJoCo steps per env step")
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy = flow_policy()
    cases = [(e, d, s, mode) for e, d, s in (("sync", 0, 4), ("naive_async", 2, 2))
             for mode in ("sync", "async", "async, no overlap")]  # fmt: skip
    best = dict.fromkeys(cases, 0.0)
    for _ in range(args.repeats):
        for case in cases:
            best[case] = max(best[case], run(policy, *case[:3], args, case[3]))
    print(f"{TASK}: {args.envs} envs, frame_skip={args.frame_skip}, {args.episodes} episodes of "
          f"50 steps, flow policy; best of {args.repeats} interleaved")  # fmt: skip
    for (e, d, s, mode), rate in best.items():
        print(f"  {e:<12} d={d} s={s}  {mode + ' vector env':<28} {rate:9,.0f} env-steps/s")
    for e, d, s in (("sync", 0, 4), ("naive_async", 2, 2)):
        gain = best[(e, d, s, "async")] / best[(e, d, s, "sync")]
        print(f"  {e:<12} async / sync throughput  {gain:.2f}")


if __name__ == "__main__":
    gym.logger.min_level = 40  # no per-worker warnings
    main()
