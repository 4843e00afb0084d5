"""Cost of bidirectional decoding (the ``bid`` executor) against N, next to plain sampling and RTC.

One replan of B envs, on the demo's flow policy (``--ckpt``/``--weak`` checkpoints, e.g. the
demo's ``runs/demo/policy`` and ``runs/demo/train/checkpoints/step_001000/policy``; without them
its config and sizes with random weights, whose guided chunks may take the guard's fallback),
times per call of:

- ``plain``: ``predict`` (one chunk per env: what ``naive_async`` asks for),
- ``rtc``: ``guided_inference`` with guidance (one backward pass per Euler step),
- ``bid N``: ``BIDExecutor.infer`` with N candidates per env, backward coherence only,
- ``bid N + weak``: the same with forward contrast against a weak policy's N samples.

Calls are interleaved, in a new order each round (a change in machine load hits them alike,
and no call always follows the largest); each figure is
the best of ``--repeats`` calls, and the ratios are to ``plain`` of the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bid.py [--batch 16] \
        [--ckpt runs/demo/policy --weak runs/demo/train/checkpoints/step_001000/policy]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from envactor import Policy, build_policy
from envactor.normalize import Normalizer
from envactor.runtime.executors.bid import BIDExecutor

S = "observation.state"
DEMO = ["model.components.velocity.type=flow_prefix_velocity_mlp",
        "policy.params.prefix_max_delay=4"]  # fmt: skip


def demo_flow(seed: int) -> Policy:
    torch.manual_seed(seed)
    policy = build_policy("flow", overrides=DEMO)
    policy.normalizer = Normalizer(
        {S: "mean_std", "action": "min_max"},
        {S: {"mean": np.zeros(3), "std": np.ones(3)},
         "action": {"min": np.array([-2.0]), "max": np.array([2.0])}},
    )  # fmt: skip
    return policy


def best_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time per call in ms of each function, calls interleaved in a new random order
    each round (after warm-up)."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    order = list(fns)
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        rng.shuffle(order)  # no call always runs right after the largest one
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            best[name] = min(best[name], (time.perf_counter() - t0) * 1e3)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--batch", type=int, default=16, help="B, envs replanning at once (demo: 16)")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="N")
    p.add_argument("--delay", type=int, default=2, help="d of the remainders")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--ckpt", default=None, help="the policy (default: random demo-sized flow)")
    p.add_argument("--weak", default=None, help="the weak policy (default: random, another seed)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    strong = build_policy(args.ckpt) if args.ckpt else demo_flow(0)
    weak = build_policy(args.weak) if args.weak else demo_flow(1)
    B, (H, A) = args.batch, strong.action_shape
    obs = {S: np.random.default_rng(0).normal(size=(B, 3)).astype(np.float32)}
    ids = list(range(B))
    s = max(args.delay, 1)
    rest = [np.zeros((H - s, A), np.float32)] * B

    def rtc() -> object:
        return strong.guided_inference(obs, prev_chunk=rest, delay=args.delay, env_ids=ids)

    fns: dict[str, Callable[[], object]] = {
        "plain": lambda: strong.predict(obs, env_ids=ids),
        "rtc": rtc,
    }
    for n in args.samples:
        for with_weak in (False, True):
            ex = BIDExecutor(strong, delay=args.delay, n_action_steps=s, num_samples=n,
                             weak=weak if with_weak else None)  # fmt: skip
            request = ex.guidance(rest, [args.delay] * B)
            fns[f"bid {n}" + (" + weak" if with_weak else "")] = lambda ex=ex, request=request: (
                ex.infer(obs, ids, request)
            )
    times = best_ms(fns, args.repeats)
    print(f"B={B} H={H} A={A} d={args.delay} s={s} threads={torch.get_num_threads()} "
          f"(best of {args.repeats}, interleaved)")  # fmt: skip
    print(f"{'call':<16} {'ms':>8} {'x plain':>8}")
    for name, ms in times.items():
        print(f"{name:<16} {ms:>8.2f} {ms / times['plain']:>8.2f}")


if __name__ == "__main__":
    main()
