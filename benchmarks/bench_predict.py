"""Overhead of Policy.predict over calling the same nn.Module directly (batch 1, CPU).

Target: <= 20 us per call. Both sides run under inference_mode; the direct call gets a torch
tensor already, predict gets numpy in and returns numpy (validation, normalization both ways).

    python benchmarks/bench_predict.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import best_of, small_mlp_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy = small_mlp_policy()
    net = policy.components["net"]
    obs = {"observation.state": np.zeros((1, 3), np.float32)}
    x = torch.zeros(1, 3)
    policy.predict(obs)

    def direct() -> None:
        with torch.inference_mode():
            net(x)

    t_direct = best_of(direct, args.number)
    t_predict = best_of(lambda: policy.predict(obs), args.number)
    t_select = best_of(lambda: policy.select_action(obs), args.number)
    print(f"nn.Module call        {t_direct * 1e6:8.1f} us")
    print(f"Policy.predict        {t_predict * 1e6:8.1f} us")
    print(f"Policy.select_action  {t_select * 1e6:8.1f} us  (mean per step, s=4 of H=8 cached)")
    print(f"predict overhead      {(t_predict - t_direct) * 1e6:8.1f} us per call (target <= 20)")
    print(f"ratio predict/direct  {t_predict / t_direct:8.2f}")


if __name__ == "__main__":
    main()
