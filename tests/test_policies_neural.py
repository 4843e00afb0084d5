"""Neural chunk policies (flow, act, mlp_chunk): configs, training, checkpoints, queues, RTC."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from envactor.normalize import Normalizer
from envactor.policy import Policy, PolicyError, build_policy, save_policy
from envactor.policy.policies.flow import FlowPolicy, edge_fill
from envactor.streaming_stats import compute_stats

S = "observation.state"
H, A = 8, 1
NAMES = ["mlp_chunk", "flow", "act"]
# Small nets so CPU training takes well under a second per policy.
SMALL = {
    "mlp_chunk": ["model.components.net.hidden_dims=[64,64]"],
    "flow": [
        "model.components.encoder.hidden_dims=[64,64]",
        "model.components.encoder.out_dim=64",
        "model.components.velocity.hidden_dims=[64,64]",
        "model.components.velocity.time_dim=32",
    ],
    "act": [
        "model.components.encoder.hidden_dims=[64]",
        "model.components.encoder.out_dim=64",
        "model.components.decoder.d_model=32",
        "model.components.decoder.nhead=2",
        "model.components.decoder.num_layers=1",
        "model.components.decoder.dim_feedforward=64",
        "model.components.decoder.dropout=0.0",
        "model.components.decoder.num_cond_tokens=2",
    ],
}


def deterministic_data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """States (n, 3) and chunks (n, H, 1) that are a fixed function of the state."""
    states = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    t = np.arange(H) / H
    chunks = 2.0 * np.tanh(states[:, :1] + 0.5 * states[:, 1:2] * t[None, :])
    return states, chunks[..., None].astype(np.float32)


PROFILE = (0.5 + np.arange(H) / H).astype(np.float32)


def bimodal_data() -> tuple[np.ndarray, np.ndarray]:
    """Each of 32 states appears twice, once with chunk +PROFILE and once with -PROFILE."""
    states = np.repeat(np.random.default_rng(1).normal(size=(32, 3)), 2, axis=0)
    sign = np.tile(np.array([1.0, -1.0]), 32)
    return states.astype(np.float32), (sign[:, None] * PROFILE)[..., None].astype(np.float32)


def stats_of(states: np.ndarray, chunks: np.ndarray) -> Normalizer:
    batch = {S: states, "action": chunks.reshape(-1, A)}
    return compute_stats([batch], {S: "mean_std", "action": "min_max"})


def train(
    name: str, states: np.ndarray, chunks: np.ndarray, steps: int = 100
) -> tuple[Policy, list[float]]:
    torch.manual_seed(0)
    policy = build_policy(name, overrides=SMALL[name])
    policy.normalizer = stats_of(states, chunks)
    policy.learn_mode.init(lr=3e-3)
    losses = [
        policy.learn_mode.forward({S: states, "action": chunks})["loss"] for _ in range(steps)
    ]
    return policy, losses


def seeded_predict(
    policy: Policy, obs: dict[str, np.ndarray], ids: list[Hashable], **kw: Any
) -> np.ndarray:
    policy.set_env_seeds({e: 100 + i for i, e in enumerate(ids)})
    return policy.predict(obs, env_ids=ids, **kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny nets gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    spinning made 100 training steps 20x slower; restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[Policy, list[float], float]]:
    """name -> (policy trained 100 steps, losses, mean abs error of predict before training)."""
    states, chunks = deterministic_data()
    out = {}
    for name in NAMES:
        torch.manual_seed(0)
        fresh = build_policy(name, overrides=SMALL[name])
        fresh.normalizer = stats_of(states, chunks)
        before = float(np.abs(seeded_predict(fresh, {S: states}, list(range(64))) - chunks).mean())
        policy, losses = train(name, states, chunks)
        out[name] = (policy, losses, before)
    return out


@pytest.fixture(scope="module")
def bimodal_flow() -> Policy:
    states, chunks = bimodal_data()
    return train("flow", states, chunks)[0]


# ---------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["flow", "act"])
def test_default_config_builds_and_follows_horizon_override(name: str) -> None:
    policy = build_policy(name)
    assert policy.name == name and policy.action_shape == (8, 1)
    assert policy.params.n_action_steps == 4 and policy.params.action_norm == "min_max"
    assert policy.input_features[S].shape == (3,)
    second = "velocity" if name == "flow" else "decoder"
    assert policy.components["encoder"].out_dim == 256
    assert policy.components[second].cond_dim == 256  # interpolated from the encoder file
    longer = build_policy(name, overrides=["policy.params.horizon=16"])
    assert longer.action_shape == (16, 1) and longer.components[second].horizon == 16
    norm = Normalizer({S: "identity", "action": "identity"}, {})
    out = longer.predict({S: np.zeros((2, 3), np.float32)}, norm)
    assert out.shape == (2, 16, 1) and np.all(np.isfinite(out))


def test_flow_default_params() -> None:
    p = build_policy("flow").params
    assert (p.num_steps, p.explore_std, p.tau_sampling) == (5, 0.1, "beta")  # type: ignore[attr-defined]
    assert p.tau_beta == (1.0, 1.5) and p.tau_max == 0.999  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "override", "message"),
    [
        ("act", "model.components.decoder.horizon=4", "decoder.horizon is 4, expected 8"),
        ("flow", "model.components.velocity.action_dim=2", "velocity.action_dim is 2, expected 1"),
        ("flow", "model.components.encoder.in_dim=4", "encoder.in_dim is 4, expected 3"),
    ],
)
def test_component_that_disagrees_with_params_is_an_error(
    name: str, override: str, message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        build_policy(name, overrides=[override])


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", NAMES)
def test_training_reduces_loss_and_prediction_error(
    trained: dict[str, tuple[Policy, list[float], float]], name: str
) -> None:
    policy, losses, before = trained[name]
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
    states, chunks = deterministic_data()
    after = float(np.abs(seeded_predict(policy, {S: states}, list(range(64))) - chunks).mean())
    assert after < 0.25 * before and after < 0.3  # targets span about [-2, 2]


@pytest.mark.parametrize("name", NAMES)
def test_loss_ignores_padded_steps(name: str) -> None:
    states, chunks = deterministic_data(16)
    policy = build_policy(name, overrides=SMALL[name])
    policy.normalizer = stats_of(states, chunks)
    pad = np.zeros((16, H), dtype=bool)
    pad[:, 5:] = True
    garbage = chunks.copy()
    garbage[:, 5:] = 50.0

    def loss(actions: np.ndarray, mask: np.ndarray | None) -> float:
        torch.manual_seed(3)  # same tau and x0 for the flow loss
        batch: dict[str, Any] = {S: states, "action": actions}
        if mask is not None:
            batch["action_is_pad"] = mask
        return float(policy.forward(batch)["loss"].detach())

    clean = loss(chunks, pad)
    assert loss(garbage, pad) == pytest.approx(clean, rel=1e-6)
    assert loss(garbage, None) > 2 * loss(chunks, None)


def test_edge_fill_repeats_the_nearest_real_action() -> None:
    action = torch.arange(10.0).view(2, 5, 1)
    pad = torch.tensor([[0, 0, 1, 1, 1], [1, 0, 1, 0, 1]], dtype=torch.bool)
    filled = edge_fill(action, pad)[..., 0]
    assert filled.tolist() == [[0, 1, 1, 1, 1], [6, 6, 6, 8, 8]]


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_gives_identical_actions(
    trained: dict[str, tuple[Policy, list[float], float]], name: str, tmp_path: Path
) -> None:
    policy = trained[name][0]
    loaded = build_policy(save_policy(policy, tmp_path / "ckpt"))
    assert type(loaded) is type(policy)
    obs = {S: deterministic_data(5)[0]}
    ids: list[Hashable] = ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(
        seeded_predict(loaded, obs, ids), seeded_predict(policy, obs, ids)
    )
    if name == "flow":
        prev = np.full((5, 4, 1), 0.5, np.float32)
        guided = []
        for p in (policy, loaded):
            p.set_env_seeds({e: 7 for e in ids})
            guided.append(p.guided_inference(obs, prev_chunk=prev, delay=1, env_ids=ids))
        np.testing.assert_array_equal(guided[0], guided[1])


# ---------------------------------------------------------------------------- per-env queues
@pytest.mark.parametrize("name", NAMES)
def test_select_action_replans_each_env_on_its_own(name: str) -> None:
    states, chunks = deterministic_data(6)
    policy = build_policy(name, overrides=SMALL[name])
    policy.normalizer = stats_of(states, chunks)
    ids: list[Hashable] = ["a", "b", "c"]
    obs1, obs2 = {S: states[:3]}, {S: states[3:]}
    seeds: dict[Hashable, int] = {"a": 1, "b": 2, "c": 3}
    policy.set_env_seeds(seeds)
    first = policy.predict(obs1, env_ids=ids)
    replanned_b = policy.predict({S: states[4:5]}, env_ids=["b"])[0]  # env b's second draw

    calls: list[list[Hashable]] = []
    plain_chunk = policy._chunk

    def recording(obs: dict[str, torch.Tensor], env_ids: Sequence[Hashable]) -> torch.Tensor:
        calls.append(list(env_ids))
        return plain_chunk(obs, env_ids)

    policy._chunk = recording  # type: ignore[method-assign]
    policy.set_env_seeds(seeds)
    np.testing.assert_array_equal(policy.select_action(obs1, env_ids=ids), first[:, 0])
    np.testing.assert_array_equal(policy.select_action(obs1, env_ids=ids), first[:, 1])
    policy.reset(["b"])
    got = policy.select_action(obs2, env_ids=ids)  # only b replans, from the new observation
    np.testing.assert_array_equal(got[[0, 2]], first[[0, 2], 2])
    np.testing.assert_array_equal(got[1], replanned_b[0])
    got = policy.select_action(obs2, env_ids=ids)
    np.testing.assert_array_equal(got[[0, 2]], first[[0, 2], 3])
    np.testing.assert_array_equal(got[1], replanned_b[1])
    policy.select_action(obs2, env_ids=ids)  # a and c ran out (s = 4); b has 2 left
    assert calls == [["a", "b", "c"], ["b"], ["a", "c"]]


# ---------------------------------------------------------------------------- flow specifics
def test_flow_chunk_does_not_depend_on_batching(
    trained: dict[str, tuple[Policy, list[float], float]],
) -> None:
    policy = trained["flow"][0]
    obs = {S: deterministic_data(4)[0]}
    ids: list[Hashable] = [10, 11, 12, 13]
    together = seeded_predict(policy, obs, ids)
    for i, e in enumerate(ids):
        policy.set_env_seeds({e: 100 + i})
        alone = policy.predict({S: obs[S][i : i + 1]}, env_ids=[e])
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5)
    policy.set_env_seeds({10: 999})  # another seed, another sample
    other = policy.predict({S: obs[S][:1]}, env_ids=[10])
    assert np.abs(other[0] - together[0]).max() > 1e-3


def test_flow_guidance_follows_the_prefix_and_its_mode(bimodal_flow: Policy) -> None:
    """On a bimodal policy, guidance toward the other mode's prefix moves the whole chunk."""
    policy = bimodal_flow
    states = bimodal_data()[0][:16]
    ids: list[Hashable] = list(range(16))
    obs = {S: states}
    base = seeded_predict(policy, obs, ids)
    mode = np.sign(base[:, :, 0].mean(1))
    other = (-mode[:, None] * PROFILE)[..., None]  # the mode the policy did not pick
    prev = other[:, :4]  # remainder of the previous chunk, d = 2 of it frozen

    def run(**kw: Any) -> np.ndarray:
        policy.set_env_seeds({e: 100 + i for i, e in enumerate(ids)})
        return policy.guided_inference(obs, prev_chunk=prev, delay=2, env_ids=ids, **kw)

    vjp, identity, blend = run(jacobian="vjp"), run(jacobian="identity"), run(method="blend")

    def head_err(x: np.ndarray) -> float:
        return float(np.abs(x[:, :2] - prev[:, :2]).mean())

    def tail_err(x: np.ndarray) -> float:
        return float(np.abs(x[:, 4:] - other[:, 4:]).mean())

    assert head_err(vjp) < 0.6 * head_err(base)
    assert head_err(identity) < 0.2 * head_err(base)
    assert tail_err(vjp) < 0.7 * tail_err(base)  # conditioned: the unmasked tail follows too
    np.testing.assert_allclose(blend[:, 4:], base[:, 4:], atol=1e-6)  # the blend cannot do that
    assert np.abs(vjp - identity).max() > 0.1


class OracleVelocity(nn.Module):
    """Exact velocity of a flow onto the single chunk ``target``: ``(target - x) / (1 - tau)``."""

    target: torch.Tensor

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target)

    def forward(
        self, x: torch.Tensor, tau: torch.Tensor | float, cond: torch.Tensor
    ) -> torch.Tensor:
        t = torch.as_tensor(tau, dtype=x.dtype).reshape(-1, 1, 1)
        out: torch.Tensor = (self.target - x) / (1.0 - t)
        return out


def oracle_flow(target: np.ndarray, **params: Any) -> FlowPolicy:
    components = {"encoder": nn.Identity(), "velocity": OracleVelocity(torch.from_numpy(target))}
    return FlowPolicy(
        components,
        input_features={S: {"shape": [3], "norm": "identity"}},
        action_dim=A,
        action_norm="identity",
        horizon=H,
        n_action_steps=4,
        **params,
    )


def test_flow_convention_with_an_exact_velocity() -> None:
    """tau 0 = noise, 1 = data; target x1 - x0; Euler lands on the data; VJP sees dx1_hat/dx = 0."""
    target = np.linspace(-1.0, 1.0, H, dtype=np.float32)[:, None]
    policy = oracle_flow(target)
    x = torch.from_numpy(np.broadcast_to(target, (32, H, A)).copy())
    torch.manual_seed(0)
    batch = {S: np.zeros((32, 3), np.float32), "action": x.numpy()}
    assert float(policy.forward(batch)["loss"]) < 1e-8
    obs = {S: np.zeros((3, 3), np.float32)}
    np.testing.assert_allclose(
        seeded_predict(policy, obs, [0, 1, 2]), np.stack([target] * 3), atol=1e-5
    )
    # x1_hat = x + (1 - tau) v = target whatever x: the true VJP of the guidance is zero
    prev = np.full((3, 4, 1), 3.0, np.float32)
    policy.set_env_seeds({0: 1, 1: 2, 2: 3})
    vjp = policy.guided_inference(obs, prev_chunk=prev, delay=2, env_ids=[0, 1, 2])
    np.testing.assert_allclose(vjp, np.stack([target] * 3), atol=1e-4)
    policy.set_env_seeds({0: 1, 1: 2, 2: 3})
    identity = policy.guided_inference(
        obs, prev_chunk=prev, delay=2, env_ids=[0, 1, 2], jacobian="identity"
    )
    assert np.abs(identity[:, :2] - 3.0).max() < np.abs(vjp[:, :2] - 3.0).min() - 0.5


def test_flow_explore_adds_seeded_gaussian_noise() -> None:
    target = np.zeros((H, A), np.float32)
    policy = oracle_flow(target, explore_std=0.25)
    obs = {S: np.zeros((2, 3), np.float32)}
    noisy = seeded_predict(policy, obs, ["x", "y"], explore=True)
    expected = []
    for seed in (100, 101):
        gen = torch.Generator().manual_seed(seed)
        torch.randn((H, A), generator=gen)  # the sampling noise comes first
        expected.append(0.25 * torch.randn((H, A), generator=gen).numpy())
    np.testing.assert_allclose(noisy, np.stack(expected), atol=1e-5)


@pytest.mark.parametrize(
    ("law", "mean", "below_half"), [("beta", 0.3996, 0.6470), ("uniform", 0.4995, 0.5005)]
)
def test_flow_tau_sampling(law: str, mean: float, below_half: float) -> None:
    policy = oracle_flow(np.zeros((H, A), np.float32), tau_sampling=law)
    torch.manual_seed(0)
    tau = policy.sample_tau(40_000, torch.device("cpu"))
    assert float(tau.min()) >= 0.0 and float(tau.max()) <= 0.999
    assert float(tau.mean()) == pytest.approx(mean, abs=0.006)  # Beta(1, 1.5): 0.999 * 0.4
    assert float((tau < 0.5).float().mean()) == pytest.approx(below_half, abs=0.008)


@pytest.mark.parametrize("name", ["flow", "act"])
def test_warmup_runs_the_acting_paths(name: str) -> None:
    policy = build_policy(name, overrides=SMALL[name])
    seen: list[str] = []
    for hook in ("_chunk", "_guided_chunk"):
        original = getattr(policy, hook)

        def wrapper(*args: Any, _hook: str = hook, _f: Any = original, **kw: Any) -> torch.Tensor:
            seen.append(_hook)
            out: torch.Tensor = _f(*args, **kw)
            return out

        setattr(policy, hook, wrapper)
    policy.warmup(batch_size=3)
    assert seen == (["_chunk", "_guided_chunk"] if name == "flow" else ["_chunk"])
    assert policy.can_guide() is (name == "flow")


# ---------------------------------------------------------------------------- training-time RTC
PREFIX = ["model.components.velocity.type=flow_prefix_velocity_mlp"]


class PrefixOracleVelocity(nn.Module):
    """Exact velocity onto ``target`` on free tokens, 1e3 on committed ones (token_tau == 1);
    records the per-token times it was called with."""

    token_time = True
    target: torch.Tensor

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target)
        self.seen: list[torch.Tensor] = []

    def forward(
        self, x: torch.Tensor, tau: Any, cond: torch.Tensor, token_tau: torch.Tensor
    ) -> torch.Tensor:
        self.seen.append(token_tau.clone())
        t = token_tau[..., None]
        exact = (self.target - x) / (1.0 - t).clamp_min(1e-6)
        return torch.where(t == 1.0, torch.full_like(x, 1e3), exact)


def prefix_oracle(target: np.ndarray, max_delay: int = 3) -> FlowPolicy:
    velocity = PrefixOracleVelocity(torch.from_numpy(target))
    return FlowPolicy(
        {"encoder": nn.Identity(), "velocity": velocity},
        input_features={S: {"shape": [3], "norm": "identity"}}, action_dim=A,
        action_norm="identity", horizon=H, n_action_steps=4, prefix_max_delay=max_delay,
    )  # fmt: skip


def test_flow_prefix_loss_skips_the_committed_tokens() -> None:
    """d ~ U{0..3} per example; committed tokens get flow time 1 and no loss (else 1e3 ** 2)."""
    target = np.linspace(-1.0, 1.0, H, dtype=np.float32)[:, None]
    policy = prefix_oracle(target)
    x = np.broadcast_to(target, (256, H, A)).copy()
    torch.manual_seed(0)
    loss = float(policy.forward({S: np.zeros((256, 3), np.float32), "action": x})["loss"])
    assert loss < 1e-8
    token_tau = policy.components["velocity"].seen[-1]
    committed = (token_tau == 1.0).sum(1)  # d of each example
    assert set(committed.tolist()) == {0, 1, 2, 3}
    for row, d in zip(token_tau, committed.tolist()):  # the prefix is the first d tokens
        assert torch.all(row[:d] == 1.0) and torch.all(row[d:] == row[-1]) and row[-1] < 1.0


def test_flow_prefix_method_writes_the_committed_actions_in() -> None:
    target = np.linspace(-1.0, 1.0, H, dtype=np.float32)[:, None]
    policy = prefix_oracle(target)
    obs = {S: np.zeros((2, 3), np.float32)}
    prev = [np.full((6, 1), 5.0, np.float32), np.full((3, 1), -5.0, np.float32)]
    out = policy.guided_inference(
        obs, prev_chunk=prev, delay=[2, 4], env_ids=["a", "b"], method="prefix"
    )
    # env b's d = 4 is clamped to its 3-action remainder; the free tokens land on the target
    np.testing.assert_allclose(out[0, :2], 5.0)
    np.testing.assert_allclose(out[1, :3], -5.0)
    np.testing.assert_allclose(out[0, 2:], target[2:], atol=1e-5)
    np.testing.assert_allclose(out[1, 3:], target[3:], atol=1e-5)
    seen = policy.components["velocity"].seen
    assert len(seen) == 5  # num_steps Euler steps, no extra (no VJP) pass
    assert seen[0][0].tolist() == [1.0, 1.0] + [0.0] * (H - 2)
    np.testing.assert_allclose(seen[-1][1], [1.0] * 3 + [0.8] * (H - 3), rtol=1e-6)


def test_flow_trained_with_prefixes_follows_a_committed_mode() -> None:
    """Bimodal data: given the other mode's first 2 actions, the rest follows that mode."""
    states, chunks = bimodal_data()
    torch.manual_seed(0)
    policy = build_policy(
        "flow", overrides=[*SMALL["flow"], *PREFIX, "policy.params.prefix_max_delay=3"]
    )
    policy.normalizer = stats_of(states, chunks)
    policy.learn_mode.init(lr=3e-3)
    for _ in range(150):
        policy.learn_mode.forward({S: states, "action": chunks})
    ids: list[Hashable] = list(range(16))
    obs = {S: states[:16]}
    base = seeded_predict(policy, obs, ids)
    other = (-np.sign(base[:, :, 0].mean(1))[:, None] * PROFILE)[..., None]
    policy.set_env_seeds({e: 100 + i for i, e in enumerate(ids)})
    out = policy.guided_inference(
        obs, prev_chunk=other[:, :4], delay=2, env_ids=ids, method="prefix"
    )
    np.testing.assert_allclose(out[:, :2], other[:, :2], atol=1e-6)
    base_err = float(np.abs(base[:, 2:] - other[:, 2:]).mean())
    assert float(np.abs(out[:, 2:] - other[:, 2:]).mean()) < 0.2 * base_err


def test_flow_prefix_settings_are_checked() -> None:
    with pytest.raises(PolicyError, match=r"prefix_max_delay=2.*flow_prefix_velocity_mlp"):
        build_policy("flow", overrides=["policy.params.prefix_max_delay=2"])
    with pytest.raises(Exception, match=r"prefix_max_delay must be < horizon=8 \(.*\), got 8"):
        build_policy("flow", overrides=[*PREFIX, "policy.params.prefix_max_delay=8"])
    plain = oracle_flow(np.zeros((H, A), np.float32))
    with pytest.raises(PolicyError, match=r"method 'prefix' .*prefix_max_delay > 0"):
        plain.guided_inference(
            {S: np.zeros((1, 3), np.float32)},
            prev_chunk=[np.zeros((4, 1))],
            delay=1,
            method="prefix",
        )
