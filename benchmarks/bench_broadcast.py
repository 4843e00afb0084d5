"""Publishing a ~100M-parameter state dict to N workers: pull (one put) vs push (one per worker).

Pull (envactor): the learner packs the weights, ``ray.put``s them ONCE and hands the reference to
the store actor; each worker's ``WeightSubscriber.check()`` sees the new version, fetches the
object (zero-copy from shared memory on this node) and copies it into its live policy, then
acknowledges. Push (baseline): the learner sends the payload to every worker as a call argument,
so Ray puts one copy per worker. Timed from the start of the publish until every worker has
loaded it; "object store bytes" is what the learner wrote into the store for that version.

Each receiver is a Ray actor holding a real policy (``mlp_chunk`` with wide hidden layers) and
the real subscriber; run on this machine the N workers share its cores.

    python benchmarks/bench_broadcast.py --params 100_000_000 --workers 1 2 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np


def policy_of(params: int) -> Any:
    import torch

    from envactor.normalize import Normalizer
    from envactor.policy.build import build_policy

    width = 4096
    layers = max(1, round(params / (width * width + width)))
    torch.manual_seed(0)
    policy = build_policy(
        "mlp_chunk",
        overrides=[f"model.components.net.hidden_dims=[{', '.join([str(width)] * (layers + 1))}]"],
    )
    policy.normalizer = Normalizer(
        {"observation.state": "mean_std", "action": "min_max"},
        {
            "observation.state": {"mean": np.zeros(3), "std": np.ones(3)},
            "action": {"min": np.array([-2.0]), "max": np.array([2.0])},
        },
    )
    return policy


class Receiver:
    """A worker's weight side: a live policy and its subscriber."""

    def __init__(self, name: str, params: int, store: Any) -> None:
        import torch

        from envactor.distributed.broadcast import WeightSubscriber

        torch.set_num_threads(1)
        self.policy = policy_of(params)
        self.sub = WeightSubscriber(self.policy, store, name)

    def ready(self) -> int:
        return sum(p.numel() for p in self.policy.parameters())

    def pull(self) -> int:
        self.sub.check()
        return self.sub.version

    def push(self, payload: Any) -> int:
        self.sub.load(payload)
        return payload.version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=100_000_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import ray
    import torch

    from envactor.distributed.broadcast import WeightPublisher
    from envactor.distributed.payload import pack, policy_weights
    from envactor.distributed.pool import init_ray
    from envactor.distributed.store import store_actor

    torch.set_num_threads(1)
    init_ray(num_cpus=max(os.cpu_count() or 1, max(args.workers)))
    learner = policy_of(args.params)
    n_params = sum(p.numel() for p in learner.parameters())
    print(f"policy: {n_params / 1e6:.1f}M parameters, {4 * n_params / 1e9:.2f} GB float32")
    remote = ray.remote(num_cpus=0)(Receiver)
    version = 0
    rows = []
    for n in args.workers:
        store = store_actor(f"bench-{n}")
        pub = WeightPublisher(store)
        workers = [remote.remote(f"w{i}", args.params, store) for i in range(n)]
        ray.get([w.ready.remote() for w in workers])
        pull_s, push_s, pub_s = [], [], []
        for _ in range(args.repeats):
            version += 1
            t0 = time.perf_counter()
            info = pub.publish(learner, version)
            pub_s.append(info.put_s)
            assert ray.get([w.pull.remote() for w in workers]) == [version] * n
            pull_s.append(time.perf_counter() - t0)
            version += 1
            t0 = time.perf_counter()
            payload = pack(policy_weights(learner), version)
            assert ray.get([w.push.remote(payload) for w in workers]) == [version] * n
            push_s.append(time.perf_counter() - t0)
        status = ray.get(store.status.remote())
        nbytes = info.nbytes
        rows.append((n, min(pub_s), min(pull_s), min(push_s), nbytes, status["max_staleness"]))
        for w in workers:
            ray.kill(w)
        ray.kill(store)
    print(f"{'workers':>7} {'publish s':>10} {'pull: all loaded s':>19} {'push: all loaded s':>19}"
          f" {'store GB pull':>14} {'store GB push':>14}")  # fmt: skip
    for n, pub_t, pull_t, push_t, nbytes, _ in rows:
        print(f"{n:>7} {pub_t:>10.3f} {pull_t:>19.3f} {push_t:>19.3f} {nbytes / 1e9:>14.2f}"
              f" {n * nbytes / 1e9:>14.2f}")  # fmt: skip
    first, last = rows[0], rows[-1]
    print(f"publish cost {last[0]} vs {first[0]} workers: {last[1] / first[1]:.2f}x (pull, one "
          f"put); push to all grows {last[3] / first[3]:.2f}x; pull/push at {last[0]} workers: "
          f"{last[2] / last[3]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
