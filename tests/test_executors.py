"""Executors on a scripted policy whose chunks are known: chunk k of an env is ``100 k + i``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envactor import Policy
from envactor.chunking import prefix_weights
from envactor.runtime import make_executor

STATE = "observation.state"


class Scripted(Policy):
    """Chunk number k (1-based, per env since its reset) holds 100 k + i at index i."""

    trainable = False

    def __init__(self, **params):  # type: ignore[no-untyped-def]
        super().__init__(None, None, **params)
        self.count: dict[object, int] = {}
        self.calls: list[list[object]] = []

    def _chunk(self, obs, env_ids):  # type: ignore[no-untyped-def]
        self.calls.append(list(env_ids))
        rows = []
        for e in env_ids:
            self.count[e] = self.count.get(e, 0) + 1
            rows.append(
                100.0 * self.count[e] + torch.arange(self.params.horizon, dtype=torch.float32)
            )
        return torch.stack(rows)[..., None]

    def _reset(self, env_ids):  # type: ignore[no-untyped-def]
        for e in env_ids if env_ids is not None else list(self.count):
            self.count.pop(e, None)


def scripted(H: int = 4, s: int = 2) -> Scripted:
    return Scripted(
        input_features={STATE: {"shape": [1], "norm": "identity"}},
        action_dim=1, horizon=H, n_action_steps=s, action_norm="identity",
    )  # fmt: skip


def run(executor, ids, steps):  # type: ignore[no-untyped-def]
    out = {e: [] for e in ids}
    for _ in range(steps):
        acts = executor.act({e: {STATE: np.zeros(1, np.float32)} for e in ids})
        for e in ids:
            out[e].append(float(acts[e][0]))
    return out


@pytest.mark.parametrize(
    ("name", "d", "expected", "held"),
    [
        ("sync", 0, [100, 101, 200, 201, 300, 301, 400], 0),
        ("sync", 1, [100, 101, 101, 200, 201, 201, 300], 2),
        ("sync", 2, [100, 101, 101, 101, 200, 201, 201], 3),
        ("naive_async", 0, [100, 101, 200, 201, 300, 301, 400], 0),
        ("naive_async", 1, [100, 101, 102, 201, 202, 301, 302], 0),
        ("naive_async", 2, [100, 101, 102, 103, 202, 203, 302], 0),
        ("naive_async", 3, [100, 101, 102, 103, 103, 203, 203, 203, 303], 3),
    ],
)
def test_exact_sequences(name: str, d: int, expected: list[int], held: int) -> None:
    ex = make_executor(name, scripted(), delay=d)
    got = run(ex, ["a"], len(expected))["a"]
    assert got == expected
    assert ex.episode_stats("a")["held_steps"] == held


def test_blend_sequence_matches_mask() -> None:
    ex = make_executor("blend", scripted(), delay=1)
    got = run(ex, ["a"], 6)["a"]
    w = prefix_weights(1, 2, 4)  # remainder [102, 103] requested at step 2, d = 1
    assert w[0] == 1.0 and 0 < w[1] < 1 and w[2] == 0.0
    second = np.array([102, 103, 202, 203]) * w + np.array([200, 201, 202, 203]) * (1 - w)
    # step 3 installs chunk 2 at index d = 1; step 4 requests chunk 3 from remainder [202, 203]
    w3 = prefix_weights(1, 2, 4)
    third = np.array([second[2], second[3], 0, 0]) * w3 + np.array([300, 301, 302, 303]) * (1 - w3)
    np.testing.assert_allclose(got, [100, 101, 102, second[1], second[2], third[1]], rtol=1e-6)


def test_rtc_falls_back_to_blend_for_unguided_policy() -> None:
    a = run(make_executor("rtc", scripted(), delay=1), ["a"], 8)["a"]
    b = run(make_executor("blend", scripted(), delay=1), ["a"], 8)["a"]
    assert a == b


def test_envs_replan_independently_in_one_batch() -> None:
    pol = scripted()
    ex = make_executor("sync", pol, delay=0)
    seq = {"a": [], "b": []}
    for step in range(6):
        if step == 3:
            ex.reset(["b"])  # b starts a new episode; a is untouched
        acts = ex.act({e: {STATE: np.zeros(1, np.float32)} for e in ("a", "b")})
        for e in seq:
            seq[e].append(float(acts[e][0]))
    assert seq["a"] == [100, 101, 200, 201, 300, 301]
    assert seq["b"] == [100, 101, 200, 100, 101, 200]
    # one policy call per step at most, with exactly the envs that needed a chunk
    assert pol.calls == [["a", "b"], ["a", "b"], ["b"], ["a"], ["b"]]


def test_temporal_ensemble_matches_offline_average() -> None:
    H, m, d, steps = 4, 0.5, 1, 7
    ex = make_executor("temporal_ensemble", scripted(H=H, s=1), delay=d, m=m)
    got = run(ex, ["a"], steps)["a"]
    # offline: chunk k (1-based) is requested at step k - 1 and usable from step k - 1 + d (the
    # first one at once); it predicts step t with value 100 k + (t - (k - 1)).
    want = []
    for t in range(steps):
        preds = []
        for k in range(1, t + 2):
            t0 = k - 1
            ready = t0 if k == 1 else t0 + d
            if ready <= t < t0 + H:
                preds.append(100 * k + (t - t0))
        w = np.exp(-m * np.arange(len(preds)))
        want.append(float(np.dot(w, preds) / w.sum()))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[1] == pytest.approx(101.0)  # at t=1 only chunk 1 has arrived


def test_bad_executor_arguments() -> None:
    with pytest.raises(ValueError, match="delay must be an integer >= 0"):
        make_executor("sync", scripted(), delay=-1)
    with pytest.raises(ValueError, match=r"s must be in \[1, H=4\], got 5"):
        make_executor("sync", scripted(), n_action_steps=5)
    with pytest.raises(KeyError, match="did you mean 'naive_async'"):
        make_executor("naive_asyn", scripted())


class PrefixScripted(Scripted):
    """Scripted chunks plus the ``_prefix_chunk`` hook: chunk k with the committed d actions in
    it (identity normalization, so the prefix is in action units)."""

    def __init__(self, **params):  # type: ignore[no-untyped-def]
        super().__init__(**params)
        self.prefix_calls: list[tuple[list[list[float]], list[int]]] = []

    def _prefix_chunk(self, obs, env_ids, request, prefix):  # type: ignore[no-untyped-def]
        prev = [np.asarray(p)[:, 0].tolist() for p in request.remainder]
        self.prefix_calls.append((prev, list(request.delay)))
        keep = request.committed_like(prefix)[..., None]
        return torch.where(keep, prefix, self._chunk(obs, env_ids))


def test_rtc_trained_writes_the_committed_prefix_in() -> None:
    pol = PrefixScripted(
        input_features={STATE: {"shape": [1], "norm": "identity"}},
        action_dim=1, horizon=4, n_action_steps=2, action_norm="identity",
    )  # fmt: skip
    got = run(make_executor("rtc_trained", pol, delay=1), ["a"], 7)["a"]
    # chunk 2 is asked at step 2 with remainder [102, 103] and d = 1: it arrives at step 3 as
    # [102, 201, 202, 203] and runs from index 1; chunks 3 and 4 likewise
    assert got == [100, 101, 102, 201, 202, 301, 302]
    assert pol.prefix_calls == [([[a, a + 1]], [1]) for a in (102.0, 202.0, 302.0)]


def test_rtc_trained_needs_a_prefix_trained_policy() -> None:
    with pytest.raises(TypeError, match=r"executor 'rtc_trained' needs .*_prefix_chunk"):
        make_executor("rtc_trained", scripted(), delay=1)
