"""VectorActor overhead vs a hand-written loop on Pendulum-v1 envs, and its per-env-step cost
from 16 to 1024 envs.

Targets: a step served from the chunk cache <= 10 us per env-step; VectorActor overhead <= 10%
over a loop doing the same env resets, env steps and forward passes, both with chunks (H = 8,
s = 4) and with inference at every step (H = s = 1), at 64 envs; the VectorActor's cost per
env-step flat (within 20%) from 16 to 1024 envs. Every figure is the best of interleaved
repeats in this one run, in CPU time of this process (``time.process_time``: every loop here
runs in this one process and thread, and CPU time does not count the waits for a core that a
shared machine adds to wall time).

    python benchmarks/bench_actor.py [--envs 64] [--steps 400] [--scale 16,64,256,1024]
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

CLOCK = time.process_time


def cache_step_cost(policy, n_envs: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per env-step when every env is served from its cached chunk (H = s = 10^4),
    through the ``{env_id: obs}`` API."""
    ex = make_executor("sync", policy)
    obs = {e: {"observation.state": np.zeros(3, np.float32)} for e in range(n_envs)}
    ex.act(obs)  # one inference fills every cache
    steps = 2000
    t0 = CLOCK()
    for _ in range(steps):
        ex.act(obs)
    return (CLOCK() - t0) / (steps * n_envs)


def make_envs(n: int, steps: int) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make("Pendulum-v1", max_episode_steps=steps) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )


def hand_loop(policy, n: int, steps: int) -> float:  # type: ignore[no-untyped-def]
    """The same work by hand: reset every env with its seed, one batched predict every s
    steps, step all envs."""
    envs = make_envs(n, steps)
    s = policy.params.n_action_steps
    t0 = CLOCK()
    obs, _ = envs.reset(seed=list(range(n)))
    chunk = None
    for t in range(steps):
        if t % s == 0:
            chunk = policy.predict({"observation.state": obs})
        obs, *_ = envs.step(chunk[:, t % s])
    dt = CLOCK() - t0
    envs.close()
    return dt


def actor_loop(policy, n: int, steps: int) -> float:  # type: ignore[no-untyped-def]
    """One episode of ``steps`` steps per env through VectorActor (sync executor, d = 0)."""
    envs = make_envs(n, steps)
    actor = VectorActor(policy, "sync")
    t0 = CLOCK()
    actor.run(envs, num_episodes=n, seed=0)
    dt = CLOCK() - t0
    envs.close()
    return dt


def interleaved(policy, n: int, steps: int, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Best of ``repeats`` interleaved runs: (hand loop s, VectorActor s)."""
    hands, actors = [], []
    for _ in range(repeats):
        hands.append(hand_loop(policy, n, steps))
        actors.append(actor_loop(policy, n, steps))
    return min(hands), min(actors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--scale", default="16,64,256,1024", help="env counts ('' skips)")
    ap.add_argument("--scale-steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    big = small_mlp_policy(horizon=10_000, n_action_steps=10_000)
    cache = cache_step_cost(big, args.envs)
    print(f"chunk-cache step ({args.envs} envs, dict API)  {cache * 1e6:6.2f} us per env-step "
          "(target <= 10)")  # fmt: skip
    env_steps = args.envs * args.steps
    for label, h, s in (("chunked H=8 s=4", 8, 4), ("per-step H=s=1", 1, 1)):
        policy = small_mlp_policy(horizon=h, n_action_steps=s)
        hand, actor = interleaved(policy, args.envs, args.steps, args.repeats)
        print(f"{label}, {args.envs} envs x {args.steps} steps:")
        print(f"  hand-written loop   {hand:7.3f} s  ({env_steps / hand:9,.0f} env-steps/s)")
        print(f"  VectorActor         {actor:7.3f} s  ({env_steps / actor:9,.0f} env-steps/s)")
        print(f"  overhead            {100 * (actor / hand - 1):7.1f} %  (target <= 10)")
    sizes = [int(x) for x in args.scale.split(",") if x]
    if not sizes:
        return
    policy = small_mlp_policy()
    print(f"per-env-step cost, chunked H=8 s=4, {args.scale_steps} steps per episode:")
    per, per_hand = {}, {}
    for n in sizes:
        hand, actor = interleaved(policy, n, args.scale_steps, max(2, args.repeats - 2))
        per[n], per_hand[n] = actor / (n * args.scale_steps), hand / (n * args.scale_steps)
        us, us_hand = per[n] * 1e6, per_hand[n] * 1e6
        over = 100 * (actor / hand - 1)
        print(f"  {n:5d} envs  VectorActor {us:6.2f} us  hand loop {us_hand:6.2f} us  "
              f"overhead {over:5.1f} % ({us - us_hand:5.2f} us per env-step)")  # fmt: skip
    spread = max(per.values()) / min(per.values())
    spread_hand = max(per_hand.values()) / min(per_hand.values())
    print(f"  VectorActor max/min over {sizes}: {spread:.2f} (target <= 1.20); "
          f"the hand loop's: {spread_hand:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
