"""build_policy / save_policy end to end, build-level config errors, and the info/policies CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from envactor import build_policy, save_policy
from envactor.cli import main
from envactor.config import ConfigError
from envactor.nn import ComponentError
from envactor.normalize import Normalizer


def write_policy(tmp: Path, params: str = "", net: str = "", ptype: str = "mlp_chunk") -> Path:
    (tmp / "components").mkdir(parents=True, exist_ok=True)
    (tmp / "components" / "net.yaml").write_text(
        textwrap.dedent(
            net
            or """\
            type: mlp
            in_dim: 3
            hidden_dims: [16]
            out_dim: ${policy.params.horizon}
            """
        )
    )
    (tmp / "policy.yaml").write_text(
        textwrap.dedent(
            f"""\
            model:
              component_config_paths:
                net: components/net.yaml
            policy:
              type: {ptype}
              params:
                input_features:
                  observation.state: {{shape: [3]}}
                action_dim: 1
                horizon: 6
                n_action_steps: 3
            """
        )
        + textwrap.indent(textwrap.dedent(params), "    ")
    )
    return tmp / "policy.yaml"


def stats() -> Normalizer:
    return Normalizer(
        {"observation.state": "mean_std", "action": "min_max"},
        {
            "observation.state": {"mean": np.array([0.0, 1.0, 2.0]), "std": np.ones(3)},
            "action": {"min": np.array([-2.0]), "max": np.array([2.0])},
        },
    )


def test_build_from_yaml_with_interpolated_component(tmp_path: Path) -> None:
    policy = build_policy(write_policy(tmp_path))
    assert policy.action_shape == (6, 1)
    assert policy.components["net"].net[-1].out_features == 6  # type: ignore[index]
    policy2 = build_policy(
        write_policy(tmp_path),
        overrides=["policy.params.horizon=4", "policy.params.n_action_steps=2"],
    )
    assert policy2.action_shape == (4, 1)


def test_checkpoint_round_trip_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(1)
    policy = build_policy(write_policy(tmp_path / "cfg"))
    policy.normalizer = stats()
    policy.weight_version = 42
    ckpt = save_policy(policy, tmp_path / "ckpt", step=7)
    loaded = build_policy(ckpt)
    assert loaded.weight_version == 42
    obs = {"observation.state": np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)}
    np.testing.assert_array_equal(policy.predict(obs), loaded.predict(obs))
    for k, v in policy.components.state_dict().items():
        assert torch.equal(v, loaded.components.state_dict()[k])
    assert not any(
        str(tmp_path) in line for line in (ckpt / "policy.yaml").read_text().splitlines()
    )


def test_unknown_policy_type_names_file_key_and_suggests(tmp_path: Path) -> None:
    path = write_policy(tmp_path, ptype="mlp_chunck")
    with pytest.raises(ConfigError) as err:
        build_policy(path)
    msg = str(err.value)
    assert "policy.yaml:5" in msg and "policy.type" in msg and "did you mean 'mlp_chunk'" in msg


def test_wrong_policy_param_names_file_key_line(tmp_path: Path) -> None:
    path = write_policy(tmp_path, params="horizonn: 3\n")
    with pytest.raises(ConfigError) as err:
        build_policy(path)
    msg = str(err.value)
    assert "policy.yaml:12" in msg and "policy.params.horizonn" in msg


def test_policy_param_wrong_type(tmp_path: Path) -> None:
    path = write_policy(tmp_path, params="explore_std: lots\n")
    with pytest.raises(ConfigError, match=r"policy.yaml:12: policy.params.explore_std"):
        build_policy(path)


def test_wrong_component_param_names_block_and_accepted(tmp_path: Path) -> None:
    net = "type: mlp\nin_dim: 3\nhiden_dims: [16]\nout_dim: 6\n"
    with pytest.raises(ComponentError) as err:
        build_policy(write_policy(tmp_path, net=net))
    msg = str(err.value)
    assert "net.yaml" in msg and "'mlp'" in msg and "hiden_dims" in msg
    assert "did you mean 'hidden_dims'" in msg and "in_dim" in msg


def test_checkpoint_missing_tensor_is_an_error(tmp_path: Path) -> None:
    policy = build_policy(write_policy(tmp_path / "cfg"))
    policy.normalizer = stats()
    ckpt = save_policy(policy, tmp_path / "ckpt")
    with pytest.raises(Exception, match="net"):
        build_policy(ckpt, overrides=["model.components.net.hidden_dims=[8]"])


def test_info_and_policies_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = build_policy(write_policy(tmp_path / "cfg"))
    policy.normalizer = stats()
    ckpt = save_policy(policy, tmp_path / "ckpt", step=3)
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "mlp_chunk" in out and "net" in out and "observation.state" in out and "step=3" in out
    assert main(["info", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    n_params = sum(p.numel() for p in policy.components.parameters())
    assert info["components"]["net"]["parameters"] == n_params
    assert info["stats_keys"] == ["action", "observation.state"]
    assert main(["policies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("mlp_chunk") for line in lines)
    assert any(line.startswith("pid") for line in lines)
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "error" in capsys.readouterr().err
