"""Overhead of Policy.predict over calling the same nn.Module directly (batch 1, CPU).

Target: <= 20 us per call. Both sides run under inference_mode; the direct call gets a torch
tensor already, predict gets numpy in and returns numpy (validation, normalization both ways).
The general (torch) boundary path, which non-CPU policies and torch inputs take, is timed too by
switching the numpy path off on a second copy of the policy, and the policy's own ``_chunk``
(torch tensor in, no boundary) splits the overhead into the policy's part and the boundary's.
Repeats of every variant are interleaved and the best of each is reported, so load on a shared
machine hits all alike.

    python benchmarks/bench_predict.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import small_mlp_policy


def interleaved_best(
    fns: dict[str, Callable[[], object]], number: int, repeats: int
) -> dict[str, float]:
    """Per name, the minimum over ``repeats`` of the mean seconds per call; one repeat of every
    function runs before the next repeat of any."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / number)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--number", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy = small_mlp_policy()
    general = small_mlp_policy()
    general._fast_boundary = lambda norm: None  # instance attribute: the torch path only
    net = policy.components["net"]
    obs = {"observation.state": np.zeros((1, 3), np.float32)}
    x = torch.zeros(1, 3)
    np.testing.assert_array_equal(policy.predict(obs), general.predict(obs))

    def direct() -> None:
        with torch.inference_mode():
            net(x)

    def chunk_only() -> None:
        with torch.inference_mode():
            policy._chunk({"observation.state": x}, [0])

    t = interleaved_best(
        {
            "direct": direct,
            "chunk": chunk_only,
            "predict": lambda: policy.predict(obs),
            "general": lambda: general.predict(obs),
            "select": lambda: policy.select_action(obs),
        },
        args.number,
        args.repeats,
    )
    us = {k: v * 1e6 for k, v in t.items()}
    print(f"nn.Module call                  {us['direct']:8.1f} us")
    print(f"policy._chunk (no boundary)     {us['chunk']:8.1f} us")
    print(f"Policy.predict                  {us['predict']:8.1f} us")
    print(f"Policy.predict (torch path)     {us['general']:8.1f} us")
    print(f"Policy.select_action            {us['select']:8.1f} us  (mean per step, s=4 of H=8)")
    over, policy_part = us["predict"] - us["direct"], us["chunk"] - us["direct"]
    print(f"predict overhead                {over:8.1f} us per call (target <= 20)")
    print(f"  the policy's _chunk           {policy_part:8.1f} us (beyond the nn.Module call)")
    print(f"  the boundary                  {us['predict'] - us['chunk']:8.1f} us")
    print(f"predict overhead (torch path)   {us['general'] - us['direct']:8.1f} us per call")
    print(f"ratio predict/direct            {t['predict'] / t['direct']:8.2f}")


if __name__ == "__main__":
    main()
