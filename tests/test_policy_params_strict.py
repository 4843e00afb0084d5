"""Policy params built from Python are as strict as from a config: a boolean is not a number and
infinities and NaN are not valid values, in PolicyParams and every subclass (inherited)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from envactor import build_policy
from envactor.config import ConfigError, load_policy_config, validate
from envactor.envs.pendulum_expert import PendulumExpertParams
from envactor.policy.policies.flow import FlowParams
from envactor.policy.policies.mlp_chunk import MLPChunkParams, MLPChunkPolicy
from envactor.policy.policies.pid import PIDParams
from envactor.policy.specs import FeatureSpec, PolicyParams

FEATURES = {"observation.state": {"shape": [3], "norm": "identity"}}


def make(cls: type[BaseModel], **kw: Any) -> BaseModel:
    base = {"input_features": FEATURES, "action_dim": 1, "action_norm": "identity"}
    return cls.model_validate({**base, **kw})


def only_error(cls: type[BaseModel], **kw: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        make(cls, **kw)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return dict(errors[0])


@pytest.mark.parametrize(
    ("cls", "key", "value", "wanted"),
    [
        (PolicyParams, "horizon", True, "an integer"),
        (PolicyParams, "action_dim", True, "an integer"),
        (PolicyParams, "control_hz", True, "a number"),
        (MLPChunkParams, "n_action_steps", False, "an integer"),
        (MLPChunkParams, "explore_std", True, "a number"),
        (FlowParams, "num_steps", True, "an integer"),
        (PIDParams, "kp", True, "a number"),
        # a field a subclass declares again still gets the base class's check
        (PendulumExpertParams, "horizon", True, "an integer"),
    ],
)
def test_booleans_are_not_numbers(cls: type[BaseModel], key: str, value: bool, wanted: str) -> None:
    err = only_error(cls, **{key: value})
    assert err["loc"] == (key,)
    assert f"expected {wanted}, got the boolean {value}" in err["msg"]


def test_booleans_inside_lists_and_tuples_are_named_by_index() -> None:
    err = only_error(FlowParams, tau_beta=[1.0, True])
    assert err["loc"] == ("tau_beta",) and "expected a number at [1]" in err["msg"]
    err = only_error(PIDParams, kp=[0.5, False])
    assert err["loc"] == ("kp",) and "expected a number at [1], got the boolean False" in err["msg"]
    with pytest.raises(ValidationError, match=r"expected an integer at \[0\], got the boolean"):
        FeatureSpec(shape=(True, 3))


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, "inf", "nan"])
@pytest.mark.parametrize(
    ("cls", "key"),
    [
        (PolicyParams, "control_hz"),
        (PolicyParams, "ema_decay"),
        (MLPChunkParams, "explore_std"),
        (FlowParams, "tau_max"),
        (PIDParams, "kp"),
        (PendulumExpertParams, "max_torque"),
    ],
)
def test_infinities_and_nan_are_refused(cls: type[BaseModel], key: str, bad: float | str) -> None:
    with pytest.raises(ValidationError) as info:
        make(cls, **{key: bad})
    errors = info.value.errors()  # a union field (PID's kp) also says "not a list"
    assert {e["loc"][0] for e in errors} == {key}, errors
    assert "finite_number" in {e["type"] for e in errors}, errors


def test_numbers_still_validate() -> None:
    p = make(
        FlowParams, horizon=16, n_action_steps="4", tau_beta=[1, 2], explore_std=0, ema_decay=0.5
    )
    assert isinstance(p, FlowParams)
    assert (p.horizon, p.n_action_steps, p.tau_beta) == (16, 4, (1.0, 2.0))
    assert (p.explore_std, p.ema_decay) == (0.0, 0.5)
    pid = make(PIDParams, kp=[2], ki=0.5, indices=[0], setpoint=[1])
    assert isinstance(pid, PIDParams) and pid.kp == [2.0] and pid.ki == 0.5
    assert FeatureSpec(shape=(3, 2)).shape == (3, 2)


def test_policy_constructor_refuses_a_boolean_horizon() -> None:
    with pytest.raises(ValidationError, match="expected an integer, got the boolean True"):
        MLPChunkPolicy(None, None, input_features=FEATURES, action_dim=1, horizon=True)


def test_yaml_ints_and_overrides_still_work(tmp_path: Path) -> None:
    policy = build_policy("mlp_chunk", overrides=["policy.params.n_action_steps=2"])
    assert policy.params.n_action_steps == 2 and type(policy.params.n_action_steps) is int
    p = tmp_path / "flow.yaml"
    p.write_text(
        "policy:\n  type: flow\n  params:\n    input_features: {x: {shape: [3]}}\n"
        "    action_dim: 2\n    horizon: 10\n    num_steps: 3\n    tau_max: 1\n"
    )
    flow = validate(load_policy_config(p).composed, FlowParams, at="policy.params")
    assert (flow.horizon, flow.num_steps, flow.tau_max) == (10, 3, 1.0)
    # from a config, the config validator's located message comes first
    p.write_text(p.read_text().replace("num_steps: 3", "num_steps: true"))
    with pytest.raises(ConfigError) as info:
        validate(load_policy_config(p).composed, FlowParams, at="policy.params")
    assert (info.value.key, info.value.line) == ("policy.params.num_steps", 7)
    assert "expected an integer, got the boolean true" in str(info.value)
