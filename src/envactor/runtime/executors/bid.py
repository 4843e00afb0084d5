"""Bidirectional decoding (BID; Liu et al. 2024, arXiv 2408.17355), the RTC paper's third
baseline, as an executor: sample N chunks per replan, execute the best (docs/chunking.md,
"Bidirectional decoding").

The timing is naive async's (request after s actions, switch when the chunk arrives d steps
later at its index d). The policy call samples N candidate chunks per env in one batched call
(``predict(..., num_samples=N)``: one forward pass per Euler step for all of them) and keeps,
per env, the candidate ``c`` with the smallest

    L(c)   = L_B(c) + L_F(c)
    L_B(c) = sum_i w_i |c_i - Y_i|                         backward coherence
    L_F(c) = mean_{a in A+} D(c, a) - mean_{a in A-} D(c, a)   forward contrast
    D(c, a) = mean_i |c_i - a_i|

with ``|.|`` the Euclidean norm over the action dims (in the normalizer's units, so every dim
counts alike), ``Y`` the env's unexecuted remainder (the request's padded prefix) and ``w`` the
request's soft mask ``W`` normalized to sum 1 (1 over the frozen prefix, decaying over the
overlap, 0 past it: the weighting of the RTC paper's BID baseline). ``A+`` are the K candidates
with the smallest ``L_B`` (other than ``c``) and ``A-`` the K of N samples of a weak policy
with the smallest ``L_B``. Without a weak policy ``L = L_B`` (coherence only). An env with
nothing to continue (its first chunk) has ``L_B = 0``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from envactor.chunking.request import GuidanceRequest
from envactor.policy.base import ACTION_KEY, Policy, PolicyError
from envactor.runtime.executors.base import EXECUTORS, ChunkExecutor

__all__ = ["BIDExecutor", "weak_seed"]

DEFAULT_NUM_SAMPLES = 16
"""N, candidates per replan (as in the RTC authors' evaluation of BID)."""
DEFAULT_MODE_SIZE = 3
"""K, the strong and weak samples forward contrast compares each candidate with."""


def weak_seed(seed: int) -> int:
    """The weak policy's noise seed for an env whose policy noise is seeded ``seed``: a fixed
    function of it, so the weak samples are reproducible per env and episode and independent of
    the strong ones."""
    return (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0x7FFF_FFFF_FFFF_FFFF


@EXECUTORS.register("bid")
class BIDExecutor(ChunkExecutor):
    """Bidirectional decoding under delay (module docstring).

    Args:
        policy: the (strong) policy.
        num_samples: N, candidates per env and replan (>= 1; 1 is naive async).
        mode_size: K, the size of the positive and negative sets (1 <= K <= N; default
            ``min(3, N)``).
        weak: the weak policy of forward contrast: a Policy, a checkpoint folder, or None for
            backward coherence alone. The demo uses an earlier checkpoint of the same training
            run, as the BID paper does.
        **kwargs: ``delay``, ``n_action_steps``, ``explore``, ``schedule`` (the mask that
            weights backward coherence) and ``max_guidance_weight`` (unused) as for every
            executor.
    """

    name = "bid"
    method = "blend"  # so each request carries the remainders, d, s and W; infer scores with them

    def __init__(
        self,
        policy: Policy,
        *,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        mode_size: int | None = None,
        weak: Policy | str | PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, **kwargs)
        n = _count("num_samples", num_samples, 1)
        k = min(DEFAULT_MODE_SIZE, n) if mode_size is None else _count("mode_size", mode_size, 1)
        if k > n:
            raise ValueError(f"bid: mode_size K must be <= num_samples N={n}, got {k}")
        self.num_samples, self.mode_size = n, k
        self.weak = _weak_policy(weak, policy)
        self._weak_seeded: dict[Hashable, int | None] = {}

    # ------------------------------------------------------------------ the policy call
    def infer(
        self, batch: Mapping[str, Any], env_ids: Sequence[Hashable], request: GuidanceRequest | None
    ) -> np.ndarray:
        """``(B, H, A)``: per env the best of N candidates (module docstring)."""
        ids = list(env_ids)
        empty = request is None or request.is_empty
        if self.num_samples == 1 or (empty and self.weak is None):
            return self.policy.predict(batch, env_ids=ids, explore=self.explore)
        strong = self.policy.predict(
            batch, env_ids=ids, explore=self.explore, num_samples=self.num_samples
        )
        if request is None:  # no remainders: forward contrast alone
            request = self.guidance([np.zeros((0, strong.shape[-1]), np.float32)] * len(ids), [0])
            assert request is not None
        y, w = self._units(request.prefix), request.weights.astype(np.float64)
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)  # (B, H), rows of zeros stay 0
        cand = self._units(strong)
        score = _coherence(cand, y, w)
        if self.weak is not None:
            self._seed_weak(ids)
            weak = self._units(self.weak.predict(batch, env_ids=ids, num_samples=self.num_samples))
            score = score + _contrast(cand, score, weak, _coherence(weak, y, w), self.mode_size)
        score = np.where(np.isfinite(score), score, np.inf)
        best = score.argmin(axis=1)
        stuck = ~np.isfinite(score[np.arange(len(ids)), best])
        if stuck.any():
            bad = [ids[i] for i in np.flatnonzero(stuck)]
            raise PolicyError(f"bid: every candidate chunk is non-finite for env(s) {bad}")
        return strong[np.arange(len(ids)), best]

    def reset(self, env_ids: Sequence[Hashable] | None = None) -> None:
        """As every executor's, and the weak policy's per-env state (its noise is reseeded from
        the strong policy's at the env's next replan)."""
        super().reset(env_ids)
        if self.weak is not None:
            self.weak.reset(env_ids)
        if env_ids is None:
            self._weak_seeded.clear()
        else:
            for e in env_ids:
                self._weak_seeded.pop(e, None)

    # ------------------------------------------------------------------ helpers
    def _seed_weak(self, env_ids: list[Hashable]) -> None:
        """Seed the weak policy's noise of envs whose strong seed changed (a new episode)."""
        assert self.weak is not None
        fresh = {}
        for e in env_ids:
            seed = self.policy.env_seed(e)
            if e not in self._weak_seeded or self._weak_seeded[e] != seed:
                self._weak_seeded[e] = seed
                if seed is not None:
                    fresh[e] = weak_seed(seed)
        if fresh:
            self.weak.set_env_seeds(fresh)

    def _units(self, actions: np.ndarray) -> np.ndarray:
        """``actions`` in the normalizer's units (raw units when it has no action stats)."""
        norm = self.policy.normalizer
        if norm is None or ACTION_KEY not in norm:
            return np.asarray(actions, np.float64)
        return np.asarray(norm.normalize(ACTION_KEY, np.asarray(actions, np.float64)))


def _coherence(cand: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(B, N)``: ``sum_i w_i |c_i - Y_i|`` of candidates ``(B, N, H, A)``."""
    dist = np.linalg.norm(cand - y[:, None], axis=-1)  # (B, N, H)
    return np.einsum("bnh,bh->bn", np.nan_to_num(dist, nan=np.inf, posinf=np.inf), w)


def _contrast(
    cand: np.ndarray, cand_score: np.ndarray, weak: np.ndarray, weak_score: np.ndarray, k: int
) -> np.ndarray:
    """``(B, N)``: mean distance to the K most coherent other candidates minus mean distance
    to the K most coherent weak samples."""
    b, n = cand_score.shape
    rows = np.arange(b)[:, None]
    order = np.argsort(np.where(np.isfinite(cand_score), cand_score, np.inf), axis=1, kind="stable")
    plus = order[:, : min(k + 1, n)]  # K + 1: a candidate in A+ compares with the K others
    minus = np.argsort(np.where(np.isfinite(weak_score), weak_score, np.inf), axis=1,
                       kind="stable")[:, :k]  # fmt: skip
    d_plus = _distance(cand, cand[rows, plus])  # (B, N, K + 1)
    is_self = plus[:, None, :] == np.arange(n)[None, :, None]
    d_plus = np.where(is_self, np.nan, d_plus)
    keep = np.argsort(is_self, axis=2, kind="stable")[:, :, : min(k, n - 1)]  # drop self, K left
    d_plus = np.take_along_axis(d_plus, keep, axis=2)
    pos = np.nanmean(d_plus, axis=2) if d_plus.shape[2] else np.zeros((b, n))
    neg = _distance(cand, weak[rows, minus]).mean(axis=2)  # (B, N)
    return np.nan_to_num(pos - neg, nan=np.inf)


def _distance(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``(B, N, M)``: ``mean_i |c_i - a_i|`` between candidates ``(B, N, H, A)`` and references
    ``(B, M, H, A)``."""
    return np.linalg.norm(cand[:, :, None] - ref[:, None], axis=-1).mean(axis=-1)


def _count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"bid: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _weak_policy(weak: Policy | str | PathLike[str] | None, strong: Policy) -> Policy | None:
    """The weak policy (built from a checkpoint folder when given one), checked against the
    strong one: same chunk shape and observation features."""
    if weak is None:
        return None
    if not isinstance(weak, Policy):
        from envactor.policy.build import build_policy

        weak = build_policy(Path(weak), device=str(strong.device))
    if weak.action_shape != strong.action_shape or list(weak.input_features) != list(
        strong.input_features
    ):
        raise ValueError(
            f"bid: the weak policy must take the strong one's observations "
            f"{list(strong.input_features)} and predict its chunk shape {strong.action_shape}; "
            f"got {list(weak.input_features)} and {weak.action_shape}"
        )
    return weak
