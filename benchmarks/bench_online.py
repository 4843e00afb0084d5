"""Collection throughput of the rollout workers: in process vs 1 and 2 Ray workers.

The DAgger workload: the ``flow`` policy (5 Euler steps per chunk, sync executor, H=8, s=4) on
``envactor/PendulumSwingUp-v0`` with the expert labeling every visited state. Reports env-steps
per second of ``WorkerPool.collect`` (worker start-up excluded, warm-up call excluded) and the
scaling against one worker.

    python benchmarks/bench_online.py --episodes 32 --num-envs 4 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import pendulum_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--policy", default="flow")
    args = ap.parse_args()

    import torch

    from envactor.distributed.broadcast import WeightPublisher
    from envactor.distributed.pool import WorkerPool, init_ray
    from envactor.distributed.store import store_actor
    from envactor.distributed.worker import checkpoint_files
    from envactor.policy.build import save_policy

    torch.set_num_threads(1)
    task = "envactor/PendulumSwingUp-v0"
    policy = pendulum_policy(args.policy)
    with tempfile.TemporaryDirectory() as tmp:
        files = checkpoint_files(save_policy(policy, Path(tmp) / "policy"))
    kwargs = dict(policy=files, task=task, num_envs=args.num_envs, executor="sync",
                  labeler="expert")  # fmt: skip
    results = {}
    start = 0
    for n in args.workers:
        if n > 0:
            init_ray()
        store = None if n == 0 else store_actor(f"bench-online-{n}")
        with WorkerPool(n, kwargs, store=store) as pool:
            WeightPublisher(pool.store).publish(policy, 1)
            pool.wait_ready()
            pool.collect(range(start, start + max(n, 1) * args.num_envs))  # warm-up
            start += 10_000
            t0 = time.perf_counter()
            rep = pool.collect(range(start, start + args.episodes), per_call=args.num_envs)
            dt = time.perf_counter() - t0
            start += 10_000
        steps = sum(len(e.trajectory["action"]) for e in rep.episodes)
        results[n] = steps / dt
        print(f"workers={n}: {rep.finished} episodes, {steps} env-steps in {dt:.2f}s = "
              f"{steps / dt:,.0f} env-steps/s")  # fmt: skip
    if 1 in results:
        for n, r in results.items():
            print(f"workers={n}: {r / results[1]:.2f}x one Ray worker")


if __name__ == "__main__":
    main()
