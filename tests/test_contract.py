"""The policy contract, second edition: owned names enforced on every subclass, the hooks, the
``_update`` hook, the seed system's call shape, per-mode state and the GuidanceRequest."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from envactor import GuidanceRequest, Policy
from envactor.chunking import DEFAULT_MAX_GUIDANCE_WEIGHT, prefix_weights, rtc_sample
from envactor.normalize import Normalizer
from envactor.policy import HOOKS, ContractError, ModeEnv
from envactor.policy.acting import ActingBoundary
from envactor.policy.hooks import owned_names
from envactor.registry import POLICY_REGISTRY
from envactor.runtime.executors import make_executor
from envactor.runtime.realtime.controller import RealtimeController
from envactor.runtime.serving.remote import RemotePolicy

STATE = "observation.state"


class Linear(Policy):
    """chunk = W x (state (3,) -> H * A = 4 * 1), MSE loss; counts ``_update`` calls."""

    required_components = ("net",)

    def __init__(self, components: Any = None, normalizer: Any = None, **params: Any) -> None:
        super().__init__(components, normalizer, **params)
        self.updates: list[float] = []

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        return self.components["net"](obs[STATE]).view(-1, *self.action_shape)

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": (self._chunk(batch, []) - batch["action"]).pow(2).mean()}

    def _update(self) -> None:  # sees the weights after the EMA step (training ones swapped in)
        self.updates.append(float(self.components["net"].weight.detach().sum()))


def linear(**kw: Any) -> Linear:
    torch.manual_seed(0)
    params = dict(
        input_features={STATE: {"shape": [3], "norm": "identity"}},
        action_dim=1, action_norm="identity", horizon=4, n_action_steps=2,
    )  # fmt: skip
    params.update(kw)
    return Linear({"net": nn.Linear(3, 4, bias=False)}, None, **params)


# ---------------------------------------------------------------------------- owned names
def test_owned_names_are_read_from_the_class_not_a_list() -> None:
    owned = owned_names(Policy, ActingBoundary)
    assert {"predict", "guided_inference", "observe", "select_action", "hooks", "can_prefix",
            "eval_mode", "n_obs_steps"} <= owned  # fmt: skip
    assert {"_predict", "_prepare", "_fast_boundary", "_guided", "_blend", "_randn"} <= owned
    assert not owned & set(HOOKS)  # hooks are what a subclass writes

    class Base:
        def new_public(self) -> None: ...

        @property
        def prop(self) -> int:
            return 1

    assert owned_names(Base) == {"new_public", "prop"}  # a method added to a base is owned


def test_every_subclass_is_checked_registered_or_not() -> None:
    with pytest.raises(ContractError, match=r"redefines internal helper\(s\) \['_prepare'\]"):

        class Helper(Linear):  # never registered
            def _prepare(self, obs: Any, norm: Any) -> Any:
                return None

    with pytest.raises(
        ContractError, match=r"RemoteTweak overrides public method\(s\) \['predict'"
    ):

        class RemoteTweak(RemotePolicy):  # RemotePolicy and its subclasses are checked too
            def predict(self, *a: Any, **k: Any) -> Any:  # type: ignore[override]
                return None

    class Fine(Linear):  # hooks and new names of its own are allowed
        def _explore(self, chunk: torch.Tensor, env_ids: Any) -> torch.Tensor:
            return chunk

        def extra(self) -> int:
            return 2

    assert Fine.hooks() == ["_chunk", "_loss", "_explore", "_update"]
    assert RemotePolicy.hooks() == ["_chunk", "_guided_chunk", "_prefix_chunk", "_reset",
                                    "_observe"]  # fmt: skip
    assert POLICY_REGISTRY.get("flow").hooks() == [
        "_chunk", "_loss", "_guided_chunk", "_prefix_chunk", "_explore"
    ]  # fmt: skip


def test_update_hook_runs_after_the_ema_step() -> None:
    p = linear(ema_decay=0.5)
    w0 = float(p.components["net"].weight.detach().sum())
    p.update()
    with torch.no_grad():
        p.components["net"].weight.add_(1.0)  # training weights move: sum + 12
    p.update()
    assert p.updates == pytest.approx([w0, w0 + 12.0], abs=1e-4)
    p.predict({STATE: np.zeros((1, 3), np.float32)})  # acting swaps the EMA in: w0 + 6
    assert float(p.components["net"].weight.detach().sum()) == pytest.approx(w0 + 6.0, abs=1e-4)
    q = linear()  # no EMA: the hook still runs
    q.update()
    assert len(q.updates) == 1


# ---------------------------------------------------------------------------- seed call shape
def test_seed_call_shape_is_read_not_ignored() -> None:
    p = linear()
    obs = {STATE: np.ones((2, 3), np.float32)}
    prev = np.full((2, 2, 1), 5.0, np.float32)
    want = p.guided_inference(obs, prev_chunk=prev, delay=1)
    got = p.guided_inference({**obs, "prev_action": prev, "est_delay": np.array([1, 1])})
    np.testing.assert_array_equal(got, want)
    assert not np.allclose(want, p.predict(obs))  # the blend really happened
    with pytest.raises(TypeError, match=r"prev_chunk=/delay= were given too"):
        p.guided_inference({**obs, "prev_action": prev}, prev_chunk=prev)
    with pytest.raises(TypeError, match=r"request= or its fields, not both.*'delay'"):
        p.guided_inference(obs, request=GuidanceRequest.build(prev, 1, horizon=4), delay=1)
    with pytest.raises(TypeError, match=r"est_delay'\] without obs\['prev_action'\]"):
        p.guided_inference({**obs, "est_delay": 1})


# ---------------------------------------------------------------------------- per-mode state
def pid() -> Policy:
    return POLICY_REGISTRY.get("pid")(
        None, None, input_features={STATE: {"shape": [2], "norm": "identity"}}, action_dim=1,
        indices=[0], setpoint=[1.0], kp=0.0, ki=1.0, kd=0.0, dt=1.0,
    )  # fmt: skip


def test_collect_and_eval_state_are_independent_for_the_same_env_id() -> None:
    p = pid()  # pure integrator: u = sum of errors (1 - x) so far, per env and per view

    def obs(x: float) -> dict[int, dict[str, np.ndarray]]:
        return {0: {STATE: np.array([x, 0.0], np.float32)}}

    assert float(p.eval_mode.forward(obs(0.0))[0][0]) == 1.0
    assert float(p.eval_mode.forward(obs(0.0))[0][0]) == 2.0
    assert float(p.collect_mode.forward(obs(-9.0))[0][0]) == 10.0  # its own integrator
    assert float(p.eval_mode.forward(obs(0.0))[0][0]) == 3.0  # untouched by collect
    p.collect_mode.reset([0])
    assert float(p.eval_mode.forward(obs(0.0))[0][0]) == 4.0  # collect's reset left eval's
    assert float(p.collect_mode.forward(obs(0.0))[0][0]) == 1.0
    assert float(p.predict({STATE: np.zeros((1, 2), np.float32)}, env_ids=[0])[0, 0, 0]) == 1.0
    p.eval_mode.reset()  # all of eval's envs, nobody else's
    assert float(p.eval_mode.forward(obs(0.0))[0][0]) == 1.0
    assert float(p.collect_mode.forward(obs(0.0))[0][0]) == 2.0
    p.reset()  # every view's state
    assert float(p.collect_mode.forward(obs(0.0))[0][0]) == 1.0
    assert float(p.eval_mode.forward(obs(0.0))[0][0]) == 1.0


def test_mode_views_draw_their_own_copy_of_the_seeded_noise() -> None:
    flow = POLICY_REGISTRY.get("flow")
    torch.manual_seed(0)
    from envactor import build_policy

    p = build_policy("flow", overrides=["policy.params.action_norm=identity"])
    assert isinstance(p, flow)
    p.normalizer = Normalizer({STATE: "identity", "action": "identity"}, {})
    o = {7: {STATE: np.zeros(3, np.float32)}}

    def eval_actions(extra_collect: int) -> list[float]:
        p.reset()
        p.set_env_seeds({7: 123})
        out = []
        for _ in range(3):
            for _ in range(extra_collect):
                p.collect_mode.forward(o)
            out.append(float(p.eval_mode.forward(o)[7][0]))
            p.eval_mode.reset([7])  # a new chunk each call
        return out

    assert eval_actions(0) == eval_actions(2)  # collect's draws do not move eval's stream
    p.reset()
    seen: list[Any] = []
    inner = p._chunk
    p._chunk = lambda obs, ids: seen.append(list(ids)) or inner(obs, ids)  # type: ignore[method-assign,func-returns-value]
    p.eval_mode.forward(o)
    p.collect_mode.forward(o)
    assert seen == [[ModeEnv("eval", 7)], [ModeEnv("collect", 7)]]


# ---------------------------------------------------------------------------- GuidanceRequest
def test_guidance_request_computes_prefix_weights_and_committed_on_demand() -> None:
    rems = [np.arange(6, dtype=np.float32)[:, None], np.zeros((0, 1), np.float32),
            np.array([[7.0], [8.0]], np.float32)]  # fmt: skip
    r = GuidanceRequest.build(rems, [2, 3, 5], horizon=8, schedule="linear", method="auto")
    assert r.method == "guided" and r.executed == (2, 8, 6)  # s = H - L_b when not given
    assert r.settings == ("linear", DEFAULT_MAX_GUIDANCE_WEIGHT, "vjp", "guided")
    np.testing.assert_array_equal(r.prefix[0, :, 0], [0, 1, 2, 3, 4, 5, 5, 5])
    np.testing.assert_array_equal(r.prefix[1], 0.0)
    np.testing.assert_array_equal(r.prefix[2, :, 0], [7, 8, 8, 8, 8, 8, 8, 8])
    np.testing.assert_array_equal(r.weights[0], prefix_weights(2, 2, 8, "linear"))
    np.testing.assert_array_equal(r.weights[1], 0.0)
    w2 = prefix_weights(2, 6, 8, "linear")  # d = 5 clamped to L = 2
    w2[2:] = 0.0
    np.testing.assert_array_equal(r.weights[2], w2)
    assert r.committed.sum(1).tolist() == [2, 0, 2]
    both = GuidanceRequest.concat([r.rows([2]), r.rows([0])])
    assert both.delay == (5, 2) and both.executed == (6, 2)
    np.testing.assert_array_equal(both.weights, r.weights[[2, 0]])
    assert r.rows([1]).is_empty and not r.is_empty


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"delay": -1}, ValueError, r"expected 0 <= delay \(d\), got -1"),
        ({"executed": 9}, ValueError, r"0 <= executed \(s\) <= 8, got 9"),
        ({"schedule": "cubic"}, ValueError, r"schedule must be one of .*'cubic'"),
        ({"beta": float("nan")}, ValueError, r"beta must be finite and in \[0, 100\]"),
        ({"jacobian": "exact"}, ValueError, r"jacobian must be one of .*'exact'"),
        ({"method": "inpaint"}, ValueError, r"method must be one of .*'inpaint'"),
        ({"remainder": [np.zeros((9, 1))]}, ValueError, r"remainder\[0\]: expected shape"),
        ({"delay": [1, 2]}, ValueError, "got 2 delay values for 1 envs"),
    ],
)
def test_guidance_request_refuses_bad_values(
    kwargs: dict[str, Any], error: type, match: str
) -> None:
    args: dict[str, Any] = {"remainder": [np.zeros((3, 1))], "delay": 1, "horizon": 8}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        GuidanceRequest.build(**args)
    with pytest.raises(Exception, match="cannot assign"):
        GuidanceRequest.build([np.zeros((3, 1))], horizon=8).beta = 1.0  # type: ignore[misc]


def test_the_guidance_defaults_live_in_one_place() -> None:
    def default(fn: Any, name: str) -> Any:
        return inspect.signature(fn).parameters[name].default

    assert default(GuidanceRequest.build, "beta") is DEFAULT_MAX_GUIDANCE_WEIGHT
    assert default(rtc_sample, "max_guidance_weight") is DEFAULT_MAX_GUIDANCE_WEIGHT
    assert default(RealtimeController.__init__, "max_guidance_weight") is (
        DEFAULT_MAX_GUIDANCE_WEIGHT
    )
    assert default(Policy.guided_inference, "max_guidance_weight") is None  # the request's
    assert make_executor("rtc", linear()).max_guidance_weight == DEFAULT_MAX_GUIDANCE_WEIGHT


class Forwarding(Linear):
    """Keeps no history at the boundary (as a remote policy): its hooks see the current frame
    and ``_observe`` gets every other step's observation."""

    stacks_history = False

    def __init__(self, **kw: Any) -> None:
        super().__init__({"net": nn.Linear(3, 4, bias=False)}, None, **kw)
        self.observed: list[tuple[list[Any], list[float]]] = []
        self.chunked: list[tuple[list[Any], tuple[int, ...]]] = []

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        self.chunked.append((list(env_ids), tuple(obs[STATE].shape)))
        return super()._chunk(obs, env_ids)

    def _observe(self, obs: dict[str, torch.Tensor], env_ids: Any) -> None:
        self.observed.append((list(env_ids), obs[STATE][:, 0].tolist()))


def test_a_policy_without_boundary_history_gets_every_other_step_in_observe() -> None:
    torch.manual_seed(0)
    p = Forwarding(
        input_features={STATE: {"shape": [3], "norm": "identity"}}, action_dim=1,
        action_norm="identity", horizon=4, n_action_steps=3, n_obs_steps=3,
    )  # fmt: skip

    def step(*xs: float) -> None:
        p.select_action({STATE: np.array([[x, 0, 0] for x in xs], np.float32)}, env_ids=["a", "b"])

    step(0.0, 10.0)  # both replan
    step(1.0, 11.0)  # neither: both observed
    p.reset(["b"])
    step(2.0, 12.0)  # b replans, a is observed
    assert p.chunked == [(["a", "b"], (2, 3)), (["b"], (1, 3))]  # current frames only
    assert p.observed == [(["a", "b"], [1.0, 11.0]), (["a"], [2.0])]
    assert not p._history._frames  # nothing stacked here
    p.eval_mode.forward({"a": {STATE: np.zeros(3, np.float32)}})
    p.eval_mode.forward({"a": {STATE: np.ones(3, np.float32)}})
    assert p.observed[-1] == ([ModeEnv("eval", "a")], [1.0])
