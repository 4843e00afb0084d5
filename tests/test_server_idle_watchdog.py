"""The per-connection idle watchdog, and the overflow check only for wider float inputs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from test_server_robustness import S, infer, mlp_policy, serving, ws

from envactor.policy.specs import FeatureSpec
from envactor.runtime.serving.requests import RequestError, parse_observation


def test_time_spent_answering_does_not_count_as_idle() -> None:
    policy = mlp_policy()
    predict = policy.predict

    def slow_predict(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # longer than the idle timeout
        return predict(*args, **kwargs)

    policy.predict = slow_predict  # type: ignore[method-assign]
    with serving(policy, idle_timeout_s=0.3) as srv, ws(srv.port) as conn:
        for _ in range(3):
            assert infer(conn).shape == (8, 1)  # not closed while being answered
        assert srv.stats["connections"] == 1


def test_float_inputs_no_wider_than_float32_skip_the_range_check_float64_does_not() -> None:
    features = {S: FeatureSpec(shape=(3,))}
    got = parse_observation({S: np.array([1e4, -2.0, 0.5], np.float16)}, features)
    assert got[S].dtype == np.float16
    got = parse_observation({S: np.array([3e38, 0.0, 1.0], np.float64)}, features)
    assert got[S][0] == 3e38
    with pytest.raises(RequestError, match=r"got 1e\+300, which would become inf"):
        parse_observation({S: np.array([1e300, 0.0, 1.0], np.float64)}, features)
    with pytest.raises(RequestError, match="expected finite values"):
        parse_observation({S: np.array([np.inf, 0.0, 1.0], np.float32)}, features)
