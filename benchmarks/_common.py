"""Shared helpers for the benchmarks (timing by interleaved repeats, a small policy)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from envactor import build_policy
from envactor.normalize import Normalizer


def best_of(fn: Callable[[], object], number: int, repeats: int = 7) -> float:
    """Minimum over ``repeats`` of the mean seconds per call over ``number`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def small_mlp_policy(horizon: int = 8, n_action_steps: int = 4):  # type: ignore[no-untyped-def]
    """mlp_chunk on a 3-d state (the pendulum's), mean/std in, min/max out."""
    return pendulum_policy(
        "mlp_chunk",
        overrides=[
            f"policy.params.horizon={horizon}",
            f"policy.params.n_action_steps={n_action_steps}",
            f"model.components.net.out_dim={horizon}",
        ],
    )


def pendulum_policy(name: str, *, device: str = "cpu", overrides: list[str] | None = None):  # type: ignore[no-untyped-def]
    """A built-in policy sized for the pendulum (seed 0) with fixed stats: mean/std in,
    min/max out (torque in [-2, 2])."""
    torch.manual_seed(0)
    policy = build_policy(name, device=device, overrides=overrides or [])
    policy.normalizer = Normalizer(
        {"observation.state": "mean_std", "action": "min_max"},
        {
            "observation.state": {"mean": np.zeros(3), "std": np.ones(3)},
            "action": {"min": np.array([-2.0]), "max": np.array([2.0])},
        },
    )
    return policy
