"""The policy contract: acting vs learning, registration checks, per-env queues, modes, EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from envactor import POLICY_REGISTRY, Policy
from envactor.normalize import Normalizer
from envactor.policy import ObservationError, PolicyError
from envactor.policy.hooks import ContractError
from envactor.registry import RegistryError

STATE = "observation.state"


class ProbePolicy(Policy):
    """Linear chunk through a dropout layer; records train flag and grad mode of every call."""

    required_components = ("net",)

    def __init__(self, components=None, normalizer=None, **params) -> None:  # type: ignore[no-untyped-def]
        super().__init__(components, normalizer, **params)
        self.seen: list[tuple[bool, bool, bool]] = []
        self.seen_ids: list[list[object]] = []

    def _chunk(self, obs, env_ids):  # type: ignore[no-untyped-def]
        net = self.components["net"]
        self.seen.append((net.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        self.seen_ids.append(list(env_ids))
        return net(obs[STATE]).view(-1, *self.action_shape)

    def _loss(self, batch):  # type: ignore[no-untyped-def]
        pred = self._chunk(batch, [])
        return {"loss": (pred - batch["action"]).pow(2).mean()}


def make_probe(dropout: float = 0.0, **kw: object) -> ProbePolicy:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Dropout(dropout), nn.Linear(2, 3 * 4))
    params = dict(input_features={STATE: {"shape": [2]}}, action_dim=3, horizon=4, n_action_steps=2)
    params.update(kw)
    stats = {
        STATE: {"mean": np.array([1.0, -1.0]), "std": np.array([2.0, 0.5])},
        "action": {"mean": np.full(3, 10.0), "std": np.full(3, 3.0)},
    }
    norm = Normalizer({STATE: "mean_std", "action": "mean_std"}, stats)
    return ProbePolicy({"net": net}, norm, **params)


def obs(b: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {STATE: np.random.default_rng(seed).normal(size=(b, 2)).astype(np.float32)}


def test_predict_normalizes_in_and_out() -> None:
    p = make_probe()
    o = obs(5)
    out = p.predict(o)
    assert out.shape == (5, 4, 3) and out.dtype == np.float32
    x = torch.from_numpy((o[STATE] - np.array([1.0, -1.0])) / (np.array([2.0, 0.5]) + 1e-8)).float()
    with torch.no_grad():
        ref = p.components["net"](x).view(5, 4, 3).numpy() * (3.0 + 1e-8) + 10.0
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_dropout_off_when_acting_on_when_learning() -> None:
    p = make_probe(dropout=0.5)
    o = obs(64)
    a1, a2 = p.predict(o), p.predict(o)
    np.testing.assert_array_equal(a1, a2)  # dropout off: deterministic
    assert p.seen[-1] == (False, False, True)  # eval, no grad, inference mode
    batch = dict(o, action=np.zeros((64, 4, 3), np.float32))
    l1 = p.forward(batch)["loss"]
    l2 = p.forward(batch)["loss"]
    assert p.seen[-1] == (True, True, False)
    assert l1.requires_grad and l1.item() != l2.item()  # dropout on: two passes differ
    p.predict(o)  # back to acting: eval again
    assert p.seen[-1][0] is False


def test_select_action_per_env_queues() -> None:
    p = make_probe()
    o = obs(3)
    ids = ["a", "b", "c"]
    chunk = p.predict(o)
    first = p.select_action(o, env_ids=ids)
    np.testing.assert_allclose(first, chunk[:, 0], rtol=1e-6)
    assert p.seen_ids[-1] == ids
    p.reset(["b"])  # only b replans next step
    o2 = obs(3, seed=1)
    second = p.select_action(o2, env_ids=ids)
    assert p.seen_ids[-1] == ["b"]
    np.testing.assert_allclose(second[[0, 2]], chunk[[0, 2], 1], rtol=1e-6)
    np.testing.assert_allclose(second[1], p.predict({STATE: o2[STATE][1:2]})[0, 0], rtol=1e-6)


def test_modes_with_arbitrary_env_ids() -> None:
    p = make_probe()
    ids = [17, "left-arm", (3, 1)]
    o = obs(3)
    per_env = {e: {STATE: o[STATE][i]} for i, e in enumerate(ids)}
    ref = p.predict(o)
    out = p.eval_mode.forward(per_env)
    assert list(out) == ids
    for i, e in enumerate(ids):
        np.testing.assert_allclose(out[e], ref[i, 0], rtol=1e-6)
    out2 = p.eval_mode.forward(per_env)  # second step of the same chunks
    for i, e in enumerate(ids):
        np.testing.assert_allclose(out2[e], ref[i, 1], rtol=1e-6)
    # collect mode explores through _explore (default none) with its own queues
    col = p.collect_mode.forward(per_env)
    for i, e in enumerate(ids):
        np.testing.assert_allclose(col[e], ref[i, 0], rtol=1e-6)
    # state_dict round trip through a view, with a version
    sd = p.eval_mode.state_dict()
    zeroed = {k: torch.zeros_like(v) for k, v in sd.items()}
    p.eval_mode.load_state_dict(zeroed, version=7)
    assert p.weight_version == 7
    np.testing.assert_allclose(p.eval_mode.forward(per_env)[17], np.full(3, 10.0), atol=1e-5)


def test_learn_mode_steps_reduce_loss() -> None:
    p = make_probe()
    o = obs(32)
    target = np.tile(np.array([10.0, 13.0, 7.0], np.float32), (32, 4, 1))
    batch = dict(o, action=target)
    p.learn_mode.init(lr=1e-2)
    first = p.learn_mode.forward(batch)["loss"]
    for _ in range(50):
        last = p.learn_mode.forward(batch)["loss"]
    assert last < 0.1 * first
    state = p.learn_mode.state_dict()
    assert state["step"] == 51


def test_ema_used_for_acting_and_storage_kept() -> None:
    p = make_probe(ema_decay=0.5)
    ptrs = [t.data_ptr() for t in p.components.parameters()]
    w0 = p.components["net"][1].weight.detach().clone()
    p.update()  # shadow starts at w0
    with torch.no_grad():
        p.components["net"][1].weight.add_(1.0)  # training weights move by +1
    p.update()  # shadow = 0.5 * w0 + 0.5 * (w0 + 1) = w0 + 0.5
    p.predict(obs(1))  # acting swaps EMA in
    torch.testing.assert_close(p.components["net"][1].weight, w0 + 0.5)
    p.forward(dict(obs(2), action=np.zeros((2, 4, 3), np.float32)))  # learning swaps back
    torch.testing.assert_close(p.components["net"][1].weight, w0 + 1.0)
    assert [t.data_ptr() for t in p.components.parameters()] == ptrs


def test_guided_inference_default_is_blend() -> None:
    p = make_probe()
    o = obs(2)
    pred = p.predict(o)
    prev = np.full((2, 2, 3), 5.0, np.float32)  # remainder L=2 -> s = H - L = 2
    out = p.guided_inference(o, prev_chunk=prev, delay=1)
    # H=4, s=2, d=1: W = [1, c*(e^c-1)/(e-1) with c=(4-2-1)/(4-2-1+1)=0.5, 0, 0]
    w1 = 0.5 * (np.exp(0.5) - 1) / (np.e - 1)
    np.testing.assert_allclose(out[:, 0], 5.0, rtol=1e-5)
    np.testing.assert_allclose(out[:, 1], 5.0 * w1 + pred[:, 1] * (1 - w1), rtol=1e-4)
    np.testing.assert_allclose(out[:, 2:], pred[:, 2:], rtol=1e-5)


def test_bad_observations_are_clear() -> None:
    p = make_probe()
    with pytest.raises(ObservationError, match=r"missing keys \['observation.state'\]"):
        p.predict({"observation.image": np.zeros((1, 2))})
    with pytest.raises(ObservationError, match=r"expected shape \(B, 2\), got \(2,\).*batch"):
        p.predict({STATE: np.zeros(2)})
    with pytest.raises(ObservationError, match="numeric"):
        p.predict({STATE: np.array([["a", "b"]])})


def test_no_stats_is_an_error_not_a_pass_through() -> None:
    p = make_probe()
    p.normalizer = None
    with pytest.raises(PolicyError, match="no normalizer stats"):
        p.predict(obs(1))


def test_registration_checks() -> None:
    with pytest.raises(ContractError, match=r"overrides public method\(s\) \['predict'\]"):

        class OverridesPredict(ProbePolicy):  # refused when defined, registered or not
            def predict(self, obs, normalizer=None, *, env_ids=None):  # type: ignore[no-untyped-def,override]
                return None

    class NoChunk(Policy):
        def _loss(self, batch):  # type: ignore[no-untyped-def]
            return {}

    with pytest.raises(RegistryError, match=r"missing required hook\(s\) \['_chunk'\]"):
        POLICY_REGISTRY.register("no_chunk")(NoChunk)

    class NoLoss(Policy):
        def _chunk(self, obs, env_ids):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(RegistryError, match=r"\['_loss'\].*trainable = False"):
        POLICY_REGISTRY.register("no_loss")(NoLoss)
    assert "no_chunk" not in POLICY_REGISTRY._items


def test_wrong_chunk_shape_names_hook() -> None:
    class Wrong(ProbePolicy):
        def _chunk(self, obs, env_ids):  # type: ignore[no-untyped-def]
            return torch.zeros(1, 2)

    p = make_probe()
    p.__class__ = Wrong
    with pytest.raises(PolicyError, match=r"_chunk must return shape \(3, 4, 3\), got \(1, 2\)"):
        p.predict(obs(3))


def test_warmup_from_spec() -> None:
    p = make_probe()
    p.warmup(batch_size=4)
    assert p.seen[-1] == (False, False, True)
    assert p.seen_ids[-1] == [0, 1, 2, 3]


def test_pid_state_per_env_and_reset() -> None:
    cls = POLICY_REGISTRY.get("pid")
    feats = {STATE: {"shape": [2], "norm": "identity"}}
    pid = cls(
        None,
        None,
        input_features=feats,
        action_dim=1,
        indices=[0],
        setpoint=[1.0],
        kp=2.0,
        ki=1.0,
        kd=0.5,
        dt=0.1,
    )
    step = lambda x, ids: pid.eval_mode.forward(  # noqa: E731
        {e: {STATE: np.array([v, 0.0], np.float32)} for e, v in zip(ids, x)}
    )
    a = step([0.0, 0.5], ["x", "y"])
    # e = 1 - x; u = kp e + ki (e dt) + kd * 0 on the first step
    np.testing.assert_allclose(a["x"], [2.0 * 1.0 + 1.0 * 0.1], rtol=1e-6)
    np.testing.assert_allclose(a["y"], [2.0 * 0.5 + 1.0 * 0.05], rtol=1e-6)
    b = step([0.2, 0.5], ["x", "y"])
    # x: e=0.8, I=0.18, D=(0.8-1)/0.1=-2 -> 1.6 + 0.18 - 1.0
    np.testing.assert_allclose(b["x"], [1.6 + 0.18 - 1.0], rtol=1e-5)
    pid.eval_mode.reset(["x"])  # x forgets; y keeps its integrator
    c = step([0.2, 0.5], ["x", "y"])
    np.testing.assert_allclose(c["x"], [1.6 + 0.08], rtol=1e-5)
    np.testing.assert_allclose(c["y"], [1.0 + 0.15], rtol=1e-5)


# ---------------------------------------------------------------- fast CPU boundary vs torch path
CAM = "observation.images.cam"
RAW = "observation.raw"
STATS_FOR = {
    "mean_std": lambda r, n: {"mean": r.normal(size=n), "std": r.uniform(0.1, 3.0, size=n)},
    "min_max": lambda r, n: {"min": r.uniform(-3, -1, size=n), "max": r.uniform(0.5, 4, size=n)},
    "quantile": lambda r, n: {"q01": r.uniform(-3, -1, size=n), "q99": r.uniform(0.5, 4, size=n)},
    "identity": lambda r, n: {},
}


class TwoInputPolicy(Policy):
    """State, a uint8 camera image and a uint8 raw feature through one linear layer."""

    required_components = ("net",)

    def _chunk(self, obs, env_ids):  # type: ignore[no-untyped-def]
        flat = [obs[k].flatten(1).float() for k in (STATE, CAM, RAW)]
        return self.components["net"](torch.cat(flat, 1)).view(-1, *self.action_shape)


def make_two(mode: str, seed: int = 0) -> TwoInputPolicy:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    features = {
        STATE: {"shape": [3], "norm": mode},
        CAM: {"shape": [2, 4, 4], "dtype": "uint8", "norm": "image"},
        RAW: {"shape": [2], "dtype": "uint8", "norm": "mean_std"},
    }
    norm = Normalizer(
        {STATE: mode, CAM: "image", RAW: "mean_std", "action": mode},
        {
            STATE: STATS_FOR[mode](rng, 3),
            RAW: STATS_FOR["mean_std"](rng, 2),
            "action": STATS_FOR[mode](rng, 2),
        },
    )
    net = nn.Linear(3 + 32 + 2, 4 * 2)
    return TwoInputPolicy({"net": net}, norm, input_features=features, action_dim=2, horizon=4)


def two_obs(b: int, seed: int, state_dtype: type = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        STATE: (rng.normal(size=(b, 3)) * 3).astype(state_dtype),
        CAM: rng.integers(0, 256, size=(b, 2, 4, 4), dtype=np.uint8),
        RAW: rng.integers(0, 256, size=(b, 2), dtype=np.uint8),
    }


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "quantile", "identity"])
def test_fast_cpu_boundary_matches_torch_path(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_two(mode)
    norm = p.normalizer
    assert norm is not None
    fast = p._fast_boundary(norm)
    assert fast is not None and (fast.action is None) == (mode == "identity")
    general = make_two(mode)
    monkeypatch.setattr(general, "_fast_boundary", lambda norm: None)
    for b, seed, dtype in [
        (1, 0, np.float32),
        (5, 1, np.float32),
        (4, 2, np.float64),
        (3, 3, np.float16),
    ]:
        o = two_obs(b, seed, dtype)
        prepared = fast.prepare(o)
        assert prepared is not None and prepared[1] == b  # the fast path really ran
        with torch.inference_mode():
            ref, _ = general._prepare(o, norm)
        for key in (STATE, CAM, RAW):
            assert prepared[0][key].dtype == ref[key].dtype == torch.float32, key
            assert torch.equal(prepared[0][key], ref[key]), key
        out, want = p.predict(o), general.predict(o)
        assert out.dtype == want.dtype == np.float32 and out.shape == (b, 4, 2)
        np.testing.assert_array_equal(out, want)  # same constants, same ops: bit for bit
    # hand check of one key: the camera's image mode is x / 255
    o = two_obs(2, 9)
    prepared = fast.prepare(o)
    assert prepared is not None
    cam = prepared[0][CAM]
    np.testing.assert_allclose(cam.numpy(), o[CAM] / 255.0, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_fast_boundary_falls_back_and_keeps_errors() -> None:
    p = make_two("mean_std")
    norm = p.normalizer
    assert norm is not None
    fast = p._fast_boundary(norm)
    assert fast is not None
    good = two_obs(2, 0)
    want = p.predict(good)
    unusual = {  # each takes the general path, which gives the same answer
        "torch inputs": {k: torch.from_numpy(v) for k, v in good.items()},
        "negative strides": {**good, STATE: good[STATE][::-1].copy()[::-1]},
        "read-only": {
            k: np.frombuffer(v.tobytes(), v.dtype).reshape(v.shape) for k, v in good.items()
        },
        "lists": {**good, STATE: good[STATE].tolist()},
    }
    for name, o in unusual.items():
        np.testing.assert_array_equal(p.predict(o), want, err_msg=name)
    assert fast.prepare(unusual["torch inputs"]) is None
    assert fast.prepare(unusual["negative strides"]) is None
    with pytest.raises(
        ObservationError,
        match=r"\['observation.images.cam'\]: expected uint8 \(image\), got torch.float32",
    ):
        p.predict({**good, CAM: good[CAM].astype(np.float32)})
    with pytest.raises(
        ObservationError,
        match=r"observation\['observation.raw'\]: expected shape \(B, 2\), got \(2, 3\)",
    ):
        p.predict({**good, RAW: np.zeros((2, 3), np.uint8)})
    with pytest.raises(ObservationError, match=r"disagree on the batch size"):
        p.predict({**good, STATE: np.zeros((3, 3), np.float32)})
    with pytest.raises(ObservationError, match="numeric"):
        p.predict({**good, STATE: np.zeros((2, 3), np.bool_)})
    int_state = {**good, STATE: np.arange(6).reshape(2, 3)}  # ints: general path, cast to float32
    np.testing.assert_array_equal(
        p.predict(int_state), p.predict({**good, STATE: np.arange(6.0).reshape(2, 3)})
    )


def test_fast_boundary_follows_normalizer_and_device() -> None:
    p = make_probe()
    o = obs(3)
    before = p.predict(o)
    assert p.normalizer is not None
    stats = p.normalizer.stats
    stats["action"]["mean"] = stats["action"]["mean"] + 1.0
    p.normalizer = Normalizer(p.normalizer.modes, stats)
    np.testing.assert_allclose(p.predict(o), before + 1.0, rtol=1e-6)  # new stats are used
    bad = Normalizer(
        {STATE: "mean_std", "action": "mean_std"},
        {**stats, STATE: {"mean": np.zeros(4), "std": np.ones(4)}},
    )
    p.normalizer = bad  # stats that do not fit the feature: the normalizer's own error
    with pytest.raises(Exception, match=r"expected trailing shape \(4,\)"):
        p.predict(o)
    p.to("meta")  # any device but the CPU keeps the torch path
    assert p._fast_boundary(bad) is None


def test_wrong_chunk_dtype_or_shape_after_explore_names_hook() -> None:
    class Wrong(ProbePolicy):
        def _explore(self, chunk, env_ids):  # type: ignore[no-untyped-def]
            return chunk[:, :2]

    p = make_probe()
    p.__class__ = Wrong
    with pytest.raises(
        PolicyError, match=r"_explore must return shape \(3, 4, 3\), got \(3, 2, 3\)"
    ):
        p.predict(obs(3), explore=True)

    class Half(ProbePolicy):
        def _chunk(self, obs, env_ids):  # type: ignore[no-untyped-def]
            return super()._chunk(obs, env_ids).to(torch.bfloat16)

    p = make_probe()
    ref = p.predict(obs(3))
    p.__class__ = Half
    out = p.predict(obs(3))  # bfloat16 chunks take the general path: rounded like before
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=2e-2, atol=0.1)
