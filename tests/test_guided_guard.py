"""No non-finite or exploding guided chunk leaves a policy: the guidance weight is bounded, every
guided row is checked against the action range of the stats, and a bad row runs the plain sample
(``envactor.policy.guard``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from envactor import GuidanceRequest, Policy
from envactor.chunking.guidance import euler_sample, rtc_sample
from envactor.normalize import Normalizer
from envactor.policy.base import PolicyError
from envactor.policy.guard import action_bounds
from envactor.runtime import make_executor

S = "observation.state"
H, A = 8, 1
PARAMS = {"input_features": {S: {"shape": [1], "norm": "identity"}}, "action_dim": A,
          "action_norm": "min_max", "horizon": H, "n_action_steps": 4}  # fmt: skip
STATS = {"action": {"min": np.array([-2.0]), "max": np.array([2.0])}}


def field(x: torch.Tensor, tau: float) -> torch.Tensor:
    """``v = 0.05 x^3 - x``: plain sampling stays near 0, but a guidance step large enough to
    overshoot the prefix lands where the cubic term takes over, and the sample diverges."""
    return 0.05 * x**3 - x


class Cubic(Policy):
    """A flow policy on :func:`field` with RTC guidance (normalized actions: torque / 2)."""

    trainable = False

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        return euler_sample(field, self._randn(env_ids, *self.action_shape))

    def _guided_chunk(
        self, obs: dict[str, torch.Tensor], env_ids: Any, request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        noise = self._randn(env_ids, *self.action_shape)
        return rtc_sample(field, noise, prefix, request.weights_like(prefix),
                          max_guidance_weight=request.beta)  # fmt: skip


def cubic() -> Cubic:
    return Cubic(None, Normalizer({S: "identity", "action": "min_max"}, STATS), **PARAMS)


def draw(seed: int, k: int) -> torch.Tensor:
    """Draw number k (0-based) of a generator seeded ``seed``, shaped (1, H, A)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(k):
        torch.randn((H, A), generator=gen)
    return torch.randn((H, A), generator=gen)[None]


SEEDS = {"a": 0, "b": 44, "c": 1}  # a's guided sample goes NaN at beta = 100, b's to 1e26


def guided(policy: Policy, beta: float) -> np.ndarray:
    policy.set_env_seeds(SEEDS)
    prev = np.full((3, H, A), 1.0, np.float32)  # the whole chunk tied (W = 1): Y = 0.5 normalized
    return policy.guided_inference({S: np.zeros((3, 1), np.float32)}, prev_chunk=prev, delay=2,
                                   env_ids=list(SEEDS), schedule="ones",
                                   max_guidance_weight=beta)  # fmt: skip


def test_exploding_guided_rows_run_the_plain_sample() -> None:
    y, w = torch.full((H, A), 0.5), torch.ones(H)
    raw = {e: rtc_sample(field, draw(s, 0), y, w, max_guidance_weight=100.0)
           for e, s in SEEDS.items()}  # fmt: skip
    assert torch.isnan(raw["a"]).any() and raw["b"].abs().max() > 1e25  # what guidance gave
    assert raw["c"].abs().max() < 0.6

    policy = cubic()
    with pytest.warns(RuntimeWarning, match=r"'cubic': a guided chunk left the action range"):
        out = guided(policy, 100.0)
    assert policy.guidance_fallbacks == 2
    # a and b: the plain sample (their generators' next draw), in action units (x 2)
    for row, e in ((0, "a"), (1, "b")):
        plain = euler_sample(field, draw(SEEDS[e], 1))
        np.testing.assert_allclose(out[row], 2 * plain[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out[2], 2 * raw["c"][0].numpy(), rtol=1e-6)  # c: untouched
    assert np.isfinite(out).all() and np.abs(out).max() < 2.0


def test_guided_rows_inside_the_range_are_left_alone() -> None:
    policy = cubic()
    out = guided(policy, 5.0)
    y, w = torch.full((H, A), 0.5), torch.ones(H)
    for row, s in enumerate(SEEDS.values()):
        want = rtc_sample(field, draw(s, 0), y, w, max_guidance_weight=5.0)
        np.testing.assert_allclose(out[row], 2 * want[0].numpy(), rtol=1e-6)
    assert policy.guidance_fallbacks == 0


def test_the_rtc_executor_never_hands_out_an_exploded_action() -> None:
    policy = cubic()
    ex = make_executor("rtc", policy, delay=2, n_action_steps=2, schedule="ones",
                       max_guidance_weight=100.0)  # fmt: skip
    policy.set_env_seeds(SEEDS)
    obs = {e: {S: np.zeros(1, np.float32)} for e in SEEDS}
    with pytest.warns(RuntimeWarning):
        actions = np.stack([np.stack(list(ex.act(obs).values())) for _ in range(30)])
    assert np.isfinite(actions).all() and np.abs(actions).max() <= 4.0
    assert policy.guidance_fallbacks > 0


def test_plain_sample_clamped_to_the_widened_range() -> None:
    bounds = action_bounds(Normalizer({"action": "min_max"}, STATS), "action",
                           torch.device("cpu"), torch.float32)  # fmt: skip
    assert bounds is not None
    assert bounds[0].tolist() == [-2.0] and bounds[1].tolist() == [2.0]  # [-1, 1] +- 0.5 x 2
    mean_std = Normalizer({"action": "mean_std"}, {"action": {"mean": np.array([1.0]),
                          "std": np.array([2.0]), "min": np.array([-3.0]),
                          "max": np.array([5.0])}})  # fmt: skip
    lo, hi = action_bounds(mean_std, "action", torch.device("cpu"), torch.float64)  # type: ignore[misc]
    # (-3 - 1) / 2 = -2 and (5 - 1) / 2 = 2 (eps aside), widened by half the width 4
    assert lo.item() == pytest.approx(-4.0, abs=1e-6) and hi.item() == pytest.approx(4.0, abs=1e-6)
    assert action_bounds(Normalizer({"action": "identity"}, {}), "action",
                         torch.device("cpu"), torch.float32) is None  # fmt: skip


class BadPlain(Cubic):
    """Guided sampling and the plain sample both NaN."""

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        return torch.full((len(env_ids), H, A), float("nan"))

    def _prefix_chunk(
        self, obs: dict[str, torch.Tensor], env_ids: Any, request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        return self._chunk(obs, env_ids)

    _guided_chunk = _prefix_chunk


@pytest.mark.parametrize("method", ["guided", "prefix", "blend"])
def test_non_finite_chunks_of_every_method_are_errors(method: str) -> None:
    policy = BadPlain(None, Normalizer({S: "identity", "action": "min_max"}, STATS), **PARAMS)
    policy.set_env_seeds(SEEDS)
    with pytest.raises(PolicyError, match=r"non-finite actions for env\(s\) \['a', 'b', 'c'\]"):
        policy.guided_inference({S: np.zeros((3, 1), np.float32)}, env_ids=list(SEEDS),
                                prev_chunk=np.zeros((3, 4, A), np.float32), delay=1,
                                method=method, max_guidance_weight=100.0)  # fmt: skip


def test_guidance_weight_is_bounded() -> None:
    with pytest.raises(ValueError, match=r"beta must be finite and in \[0, 100\], got 100.5"):
        GuidanceRequest.build([np.zeros((2, 1))], 1, horizon=4, beta=100.5)
    with pytest.raises(ValueError, match=r"in \[0, 100\], got 1000.0"):
        rtc_sample(field, torch.zeros(1, H, A), torch.zeros(H, A), torch.ones(H),
                   max_guidance_weight=1000.0)  # fmt: skip
    with pytest.raises(ValueError, match=r"beta must be finite and in \[0, 100\]"):
        make_executor("rtc", cubic(), max_guidance_weight=101.0)
