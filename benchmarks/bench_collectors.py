"""Collector throughput side by side on the same envs and network: a hand-written loop,
envactor's VectorActor and TorchRL's ``Collector``, 64 ``Pendulum-v1`` envs (200-step
episodes, 400 steps per env), the small MLP with inference at every step (H = s = 1: TorchRL's
collector asks the policy every step); envactor with chunks (H = 8, s = 4) as well.

TorchRL is a benchmark-only dependency, never installed by ``make test``; without it the TorchRL
line is skipped with a message. To run it, a separate venv::

    python3.11 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 && .venv-bench/bin/pip install torchrl==0.14.1
    .venv-bench/bin/pip install -e . && .venv-bench/bin/python benchmarks/bench_collectors.py

The TorchRL set-up: ``GymWrapper`` around gymnasium's ``SyncVectorEnv`` (autoreset
``SAME_STEP``, which TorchRL requires), one process, the same network as a
``TensorDictModule``. (``GymEnv("Pendulum-v1", num_envs=64)`` makes worker processes; it hung
in one try, so it is not used.) Each figure is the best of interleaved repeats in this run, in
CPU time of this process (all three run in it, on one torch thread).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch
from _common import small_mlp_policy

from envactor.runtime.actor import VectorActor

EPISODE = 200
CLOCK = time.process_time  # every loop runs in this process: CPU time, not the shared cores' waits


def make_envs(n: int, mode: Any = gym.vector.AutoresetMode.DISABLED) -> gym.vector.VectorEnv:
    fns = [lambda: gym.make("Pendulum-v1", max_episode_steps=EPISODE) for _ in range(n)]
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)


def hand_loop(policy: Any, n: int, steps: int) -> float:
    """Reset, one batched predict every s steps, step all envs; reset again every episode."""
    envs = make_envs(n)
    s = policy.params.n_action_steps
    t0 = CLOCK()
    chunk = obs = None
    for t in range(steps):
        if t % EPISODE == 0:
            obs, _ = envs.reset(seed=[t + i for i in range(n)])
        if t % s == 0:
            chunk = policy.predict({"observation.state": obs})
        obs, *_ = envs.step(chunk[:, t % s])  # type: ignore[index]
    dt = CLOCK() - t0
    envs.close()
    return dt


def envactor_loop(policy: Any, n: int, steps: int) -> float:
    envs = make_envs(n)
    actor = VectorActor(policy, "sync")
    t0 = CLOCK()
    actor.run(envs, num_episodes=n * (steps // EPISODE), seed=0)
    dt = CLOCK() - t0
    envs.close()
    return dt


def torchrl_loop(policy: Any, n: int, steps: int) -> Callable[[], float] | str:
    """A function timing TorchRL's collector over ``n * steps`` frames, or why it can't run."""
    try:
        from tensordict.nn import TensorDictModule
        from torchrl.collectors import Collector
        from torchrl.envs import GymWrapper
    except ImportError as exc:
        return f"skipped: TorchRL is not importable here ({exc}); see this file's docstring"
    net = policy.components["net"]

    class Act(torch.nn.Module):
        """The same network and action scale: min/max [-2, 2] unnormalization of action 0."""

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return 2.0 * net(obs)[..., :1]

    module = TensorDictModule(Act(), in_keys=["observation"], out_keys=["action"])

    def run() -> float:
        env = GymWrapper(make_envs(n, gym.vector.AutoresetMode.SAME_STEP))
        env.set_seed(0)
        collector = Collector(env, module, frames_per_batch=n * 100, total_frames=n * steps)
        t0 = CLOCK()
        frames = sum(batch.numel() for batch in collector)
        dt = CLOCK() - t0
        collector.shutdown()
        assert frames == n * steps, frames
        return dt

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400, help="steps per env (x 200-step episodes)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, steps = args.envs, args.steps
    per_step = small_mlp_policy(horizon=1, n_action_steps=1)
    chunked = small_mlp_policy()
    trl = torchrl_loop(per_step, n, steps)
    runs: dict[str, Callable[[], float]] = {
        "hand loop, H=s=1": lambda: hand_loop(per_step, n, steps),
        "envactor VectorActor, H=s=1": lambda: envactor_loop(per_step, n, steps),
        "hand loop, H=8 s=4": lambda: hand_loop(chunked, n, steps),
        "envactor VectorActor, H=8 s=4": lambda: envactor_loop(chunked, n, steps),
    }
    if not isinstance(trl, str):
        runs["TorchRL Collector, H=s=1"] = trl
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeats):
        for name, fn in runs.items():
            best[name] = min(best[name], fn())
    frames = n * steps
    print(f"{n} Pendulum-v1 envs x {steps} steps, best of {args.repeats} interleaved:")
    for name, dt in best.items():
        print(f"  {name:<32} {frames / dt:10,.0f} env-steps/s  ({dt:.3f} s CPU)")
    if isinstance(trl, str):
        print(f"  TorchRL Collector, H=s=1         {trl}")
    else:
        ratio = best["envactor VectorActor, H=s=1"] / best["TorchRL Collector, H=s=1"]
        print(f"  envactor / TorchRL time, H=s=1   {ratio:.2f}")


if __name__ == "__main__":
    main()
