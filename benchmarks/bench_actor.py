"""Chunk-cache step cost, and VectorActor overhead vs a hand-written loop (64 Pendulum-v1 envs).

Targets: a step served from the chunk cache <= 10 us per env-step; VectorActor overhead
<= 10% over a loop doing the same env steps and forward passes.

    python benchmarks/bench_actor.py [--envs 64] [--steps 400]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from _common import small_mlp_policy

from envactor.runtime.actor import VectorActor
from envactor.runtime.executors import make_executor


def cache_step_cost(policy, n_envs: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per env-step when every env is served from its cached chunk (H = s = 10^4)."""
    ex = make_executor("sync", policy)
    ex.s = ex.horizon  # serve the whole chunk from the cache
    obs = {e: {"observation.state": np.zeros(3, np.float32)} for e in range(n_envs)}
    ex.act(obs)  # one inference fills every cache
    steps = policy.params.horizon - 1
    t0 = time.perf_counter()
    for _ in range(steps):
        ex.act(obs)
    return (time.perf_counter() - t0) / (steps * n_envs)


def make_envs(n: int, steps: int) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make("Pendulum-v1", max_episode_steps=steps) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )


def hand_loop(policy, n: int, steps: int) -> float:  # type: ignore[no-untyped-def]
    """The same work by hand: one batched predict every s steps, step all envs."""
    envs = make_envs(n, steps)
    obs, _ = envs.reset(seed=list(range(n)))
    s = policy.params.n_action_steps
    t0 = time.perf_counter()
    chunk = None
    for t in range(steps):
        if t % s == 0:
            chunk = policy.predict({"observation.state": obs})
        obs, *_ = envs.step(chunk[:, t % s])
    dt = time.perf_counter() - t0
    envs.close()
    return dt


def actor_loop(policy, n: int, steps: int) -> float:  # type: ignore[no-untyped-def]
    envs = make_envs(n, steps)
    actor = VectorActor(policy, "sync")
    t0 = time.perf_counter()
    actor.run(envs, num_episodes=n, seed=0)
    dt = time.perf_counter() - t0
    envs.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    big = small_mlp_policy(horizon=10_000, n_action_steps=10_000)
    cache = cache_step_cost(big, args.envs)
    print(f"chunk-cache step      {cache * 1e6:8.2f} us per env-step (target <= 10)")
    policy = small_mlp_policy()
    hands, actors = [], []
    for _ in range(args.repeats):  # interleaved, best of each: the machine is shared
        hands.append(hand_loop(policy, args.envs, args.steps))
        actors.append(actor_loop(policy, args.envs, args.steps))
    hand, actor = min(hands), min(actors)
    env_steps = args.envs * args.steps
    print(f"hand-written loop     {hand:8.3f} s  ({env_steps / hand:,.0f} env-steps/s)")
    print(f"VectorActor           {actor:8.3f} s  ({env_steps / actor:,.0f} env-steps/s)")
    print(f"overhead              {100 * (actor / hand - 1):8.1f} %  (target <= 10)")


if __name__ == "__main__":
    main()
