"""The LeRobot bridge without LeRobot: recognizing checkpoint folders, the errors, and the hook's
plumbing (preprocessor -> model -> postprocessor) with stand-ins for LeRobot's objects.
LeRobot's own outputs are compared in tests/with_lerobot/test_lerobot_policies.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from envactor import build_policy
from envactor.interop.lerobot import (
    LeRobotCheckpointError,
    LeRobotNotInstalledError,
    LeRobotPolicy,
    describe_checkpoint,
    lerobot_checkpoint_dir,
    load_lerobot_policy,
)
from envactor.policy import save_policy
from envactor.policy.contract import check_policy_class

ACT = Path(__file__).parent / "fixtures" / "lerobot" / "act"
HAS_LEROBOT = importlib.util.find_spec("lerobot") is not None


def test_recognizes_pretrained_model_folders_and_step_folders(tmp_path: Path) -> None:
    assert lerobot_checkpoint_dir(ACT) == ACT
    step = tmp_path / "005000"
    shutil.copytree(ACT, step / "pretrained_model")
    assert lerobot_checkpoint_dir(step) == step / "pretrained_model"
    assert lerobot_checkpoint_dir(ACT / "config.json") is None  # a file
    assert lerobot_checkpoint_dir(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"horizon": 3}))  # no 'type'
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert lerobot_checkpoint_dir(tmp_path) is None


@pytest.mark.skipif(HAS_LEROBOT, reason="LeRobot is installed here")
def test_without_lerobot_the_error_says_how_to_install_it() -> None:
    with pytest.raises(LeRobotNotInstalledError) as info:
        build_policy(ACT)
    msg = str(info.value)
    assert str(ACT) in msg and "type 'act'" in msg
    assert "pip install lerobot" in msg and "torch<2.11" in msg and "make test-lerobot" in msg


def test_unsupported_type_and_missing_processors_are_named(tmp_path: Path) -> None:
    other = tmp_path / "vqbet"
    shutil.copytree(ACT, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(cfg, type="vqbet")))
    with pytest.raises(LeRobotCheckpointError, match=r"type 'vqbet' is not supported.*act, diff"):
        build_policy(other)
    bare = tmp_path / "bare"
    shutil.copytree(ACT, bare)
    (bare / "policy_postprocessor.json").unlink()
    with pytest.raises(LeRobotCheckpointError, match=r"processors \['policy_postprocessor.json'\]"):
        load_lerobot_policy(bare)


def test_overrides_do_not_apply_to_a_lerobot_checkpoint() -> None:
    with pytest.raises(
        ValueError, match=r"LeRobot checkpoint.*--override policy\.params\.horizon=3"
    ):
        build_policy(ACT, overrides=["policy.params.horizon=3"])


class FakeModel(nn.Module):
    """Stands in for a LeRobot policy: ``predict_action_chunk`` = tanh(w * state) per step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.config = SimpleNamespace(image_features=[])
        self.seen: list[dict[str, torch.Tensor]] = []

    def predict_action_chunk(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.seen.append(batch)
        x = batch["observation.state"]
        return torch.tanh(self.w * x)[:, None, :].repeat(1, 3, 1) + torch.arange(3.0)[:, None]


def fake_policy(n_obs: int = 1) -> tuple[LeRobotPolicy, FakeModel]:
    model = FakeModel()

    def pre(batch: dict[str, Any]) -> dict[str, Any]:  # LeRobot's pipeline shape of output
        return {"observation.state": batch["observation.state"] * 2.0, "action": None}

    def post(actions: torch.Tensor) -> torch.Tensor:
        return actions + 100.0

    policy = LeRobotPolicy(
        {"model": model},
        processors=(pre, post),
        input_features={"observation.state": {"shape": [2], "norm": "identity"}},
        action_dim=2,
        action_norm="identity",
        horizon=3,
        n_action_steps=2,
        n_obs_steps=n_obs,
        lerobot_type="fake",
    )
    return policy, model


def test_hook_is_post_of_model_of_pre_with_identity_normalization() -> None:
    check_policy_class("lerobot", LeRobotPolicy)
    policy, model = fake_policy()
    x = np.array([[0.1, -0.3], [1.0, 2.0]], np.float32)
    out = policy.predict({"observation.state": x})
    want = np.tanh(0.5 * 2.0 * x)[:, None, :] + np.arange(3.0)[:, None] + 100.0
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert list(model.seen[-1]) == ["observation.state"]  # pre's extra keys filtered out
    assert policy.select_action({"observation.state": x}).shape == (2, 2)
    with pytest.raises(Exception, match="not trainable"):
        policy.forward({"observation.state": x, "action": np.zeros((2, 3, 2), np.float32)})


def test_history_reaches_the_model_frame_by_frame() -> None:
    policy, model = fake_policy(n_obs=2)
    policy.observe({"observation.state": np.array([[1.0, 1.0]], np.float32)}, env_ids=["a"])
    policy.predict({"observation.state": np.array([[3.0, 3.0]], np.float32)}, env_ids=["a"])
    # the model reads the current frame; a queue-less model (ACT) gets only that one
    assert model.seen[-1]["observation.state"].tolist() == [[6.0, 6.0]]


def test_save_policy_points_to_lerobots_own_format(tmp_path: Path) -> None:
    policy, _ = fake_policy()
    policy.config = {"lerobot": {"path": "somewhere", "type": "fake"}}
    with pytest.raises(ValueError, match=r"LeRobot's format.*save_pretrained"):
        save_policy(policy, tmp_path / "out")
    with pytest.raises(Exception, match="needs the checkpoint's"):
        LeRobotPolicy({"model": FakeModel()}, **{"input_features": {"s": {"shape": [1]}},
                                                 "action_dim": 1, "lerobot_type": "x"})  # fmt: skip


def test_describe_reads_the_files_without_lerobot() -> None:
    from safetensors.torch import load_file

    info = describe_checkpoint(ACT)
    assert info["policy"] == "lerobot/act" and info["path"] == str(ACT.resolve())
    assert info["action"] == {"horizon": 10, "action_dim": 4}
    assert info["params"]["n_action_steps"] == 5 and info["params"]["n_obs_steps"] == 1
    assert info["input_features"]["observation.environment_state"]["shape"] == [4]
    tensors = load_file(ACT / "model.safetensors")
    assert info["components"]["model"]["parameters"] == sum(t.numel() for t in tensors.values())
    assert info["stats_keys"] == ["action", "observation.environment_state", "observation.state"]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    from envactor.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_info_summarizes_a_lerobot_folder_without_lerobot(tmp_path: Path) -> None:
    code, out, err = run_cli(["info", str(ACT)])
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0] == f"checkpoint  {ACT.resolve()}"
    assert lines[1] == "policy      lerobot/act  (H=10, A=4)"
    params = sum(load_file_numel(ACT / "model.safetensors"))
    assert f"{params:>12,d} params" in lines[2] and "act" in lines[2]
    assert "feature     observation.state            shape=[4] dtype=float32" in lines
    assert lines[-1].startswith("format      LeRobot checkpoint (type act): acting only")
    step = tmp_path / "010000"  # a LeRobot training step folder: its pretrained_model/
    shutil.copytree(ACT, step / "pretrained_model")
    code, out, _ = run_cli(["info", str(step), "--json"])
    info, want = json.loads(out), describe_checkpoint(ACT)
    folder = step / "pretrained_model"
    assert code == 0 and info["path"] == str(folder.resolve())
    assert info["params"].pop("source") == str(folder)
    want["params"].pop("source")
    assert {**info, "path": want["path"]} == want


def load_file_numel(path: Path) -> list[int]:
    from safetensors.torch import load_file

    return [t.numel() for t in load_file(path).values()]


def test_train_refuses_a_lerobot_checkpoint_in_one_line(tmp_path: Path) -> None:
    dataset = ACT.parent / "dataset"
    code, out, err = run_cli(
        ["train", str(ACT), "--data", str(dataset), "--out", str(tmp_path / "run")]
    )
    assert code == 2 and not out and len(err.splitlines()) == 1
    assert err.startswith(f"envactor train: error: {ACT} is a LeRobot checkpoint: LeRobot "
                          "policies are acting-only in envactor (eval, serve, run)")  # fmt: skip
    assert not (tmp_path / "run").exists()
    policy, _ = fake_policy()  # a built LeRobot policy is refused the same way
    policy.config = {"lerobot": {"path": "somewhere/pretrained_model", "type": "fake"}}
    from envactor.train import TrainError, train

    with pytest.raises(TrainError, match=r"somewhere/pretrained_model is a LeRobot checkpoint"):
        train(policy, dataset, out_dir=tmp_path / "run2", steps=1, progress=False)


@pytest.mark.skipif(HAS_LEROBOT, reason="LeRobot is installed here")
@pytest.mark.parametrize("command", ["eval", "serve"])
def test_cli_commands_without_lerobot_say_how_to_install_it(command: str) -> None:
    argv = {"eval": ["eval", str(ACT), "--env", "envactor/PendulumSwingUp-v0", "--episodes", "1"],
            "serve": ["serve", str(ACT), "--port", "0"]}[command]  # fmt: skip
    code, out, err = run_cli(argv)
    assert code == 2 and not out and len(err.splitlines()) == 1
    assert err.startswith(f"envactor {command}: error: {ACT} is a LeRobot checkpoint")
    assert "pip install lerobot" in err
