"""Helpers shared by the server tests: a small normalized policy and a server context."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from envactor import Policy, build_policy
from envactor.normalize import Normalizer
from envactor.runtime.serving.server import PolicyServer

S = "observation.state"
STATS = {S: {"mean": np.zeros(3), "std": np.ones(3)},
         "action": {"min": np.array([-2.0]), "max": np.array([2.0])}}  # fmt: skip


def mlp_policy(*overrides: str) -> Policy:
    """``mlp_chunk`` on a 3-d state, seed 0, mean/std in and min/max (+-2) out."""
    torch.manual_seed(0)
    p = build_policy("mlp_chunk", overrides=list(overrides))
    p.normalizer = Normalizer({S: "mean_std", "action": "min_max"}, STATS)
    return p


@contextmanager
def serving(policy: Policy, **kwargs: Any) -> Iterator[PolicyServer]:
    """A started ``PolicyServer`` on a free loopback port, stopped on exit."""
    server = PolicyServer(policy, port=0, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def state(x: float) -> np.ndarray:
    """An observation.state row parameterized by ``x``."""
    return np.array([x, 0.5 - x, 1.0], dtype=np.float32)
