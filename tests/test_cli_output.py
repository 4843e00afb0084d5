"""Readable CLI output: help shows every default, eval prints its settings and a whole table,
info prints the params, train prints the loss its log ends with; env options reach the env."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest

from envactor import build_policy, save_policy
from envactor.argtypes import env_opt
from envactor.cli import build_parser, main
from envactor.normalize import Normalizer
from envactor.runtime.collect import collect

TASK = "envactor/PendulumSwingUp-v0"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained mlp_chunk checkpoint for the pendulum task (3 state dims, 1 action)."""
    policy = build_policy("mlp_chunk")
    policy.normalizer = Normalizer(
        {"observation.state": "mean_std", "action": "min_max"},
        {
            "observation.state": {"mean": np.zeros(3), "std": np.ones(3)},
            "action": {"min": np.array([-2.0]), "max": np.array([2.0])},
        },
    )
    return save_policy(policy, tmp_path_factory.mktemp("cli") / "ckpt", step=5)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_shows_every_default() -> None:
    subs = subparsers()
    assert set(subs) >= {"eval", "collect", "train", "demo", "serve", "run", "train-online"}
    missing = []
    for name, sub in subs.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or action.required or action.dest == "help":
                continue
            # each option's help line (after its flags) states a default
            formatter = sub._get_formatter()
            line = " ".join(formatter._format_action(action).split())
            if "default" not in line.lower():
                missing.append(f"{name} {action.option_strings[0]}")
        assert "usage: envactor" in text
    assert missing == []
    eval_help = " ".join(subs["eval"].format_help().split())
    assert "--num-envs NUM_ENVS parallel envs (default: 8)" in eval_help
    assert "--episodes EPISODES episodes to run (default: 32)" in eval_help
    assert "(default: sync)" in eval_help and "--json" in eval_help


def test_eval_prints_settings_and_a_whole_table_at_80_columns(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    argv = ["eval", str(ckpt), "--env", TASK, "--executor", "temporal_ensemble", "--delay", "1",
            "--episodes", "3", "--num-envs", "2", "--max-episode-steps", "6", "--seed", "7",
            "--action-noise", "0.25", "--n-action-steps", "3"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "settings: executor=temporal_ensemble d=1 s=3 action_noise=0.25 episodes=3 num_envs=2 "
        "seed=7 max_episode_steps=6"
    )
    assert lines[1] == f"policy: {ckpt.resolve()}"
    text = "\n".join(lines)
    assert "…" not in text
    for word in ("env_id", TASK, "temporal_ensemble", "success_rate", "held_steps_mean"):
        assert word in text
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"] == {
        "executor": "temporal_ensemble", "delay": 1, "n_action_steps": 3,
        "action_noise_std": 0.25, "episodes": 3, "num_envs": 2, "seed": 7,
        "env_kwargs": {"action_noise_std": 0.25, "max_episode_steps": 6},
    }  # fmt: skip
    assert [e["length"] for e in out["episodes"]] == [6, 6, 6]


def test_action_noise_and_env_opt_reach_the_env(
    ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", str(ckpt), "--env", TASK, "--episodes", "2", "--json"]

    def returns(*extra: str) -> list[float]:
        assert main([*base, *extra]) == 0
        return [e["episode_return"] for e in json.loads(capsys.readouterr().out)["episodes"]]

    quiet = returns("--max-episode-steps", "20")
    noisy = returns("--max-episode-steps", "20", "--action-noise", "0.5")
    same = returns("--env-opt", "action_noise_std=0.5", "--env-opt", "max_episode_steps=20")
    assert noisy == same and noisy != quiet
    assert main([*base, "--env-opt", "action_noise_std=0.1", "--action-noise", "0.2"]) == 2
    assert "--action-noise" in capsys.readouterr().err


def test_env_opt_parses_yaml_scalars() -> None:
    assert env_opt("action_noise_std=0.1") == ("action_noise_std", 0.1)
    assert env_opt("hold_steps=null") == ("hold_steps", None)
    assert env_opt("render_mode=rgb_array") == ("render_mode", "rgb_array")
    assert env_opt("lr=1e-3") == ("lr", 0.001)  # read like a config value, not a string
    assert env_opt("tag=") == ("tag", "")
    for bad in ("noequals", "1x=2", "k=[1, 2]", "k={a: 1}", "k=*nope", "k=[1"):
        with pytest.raises(argparse.ArgumentTypeError):
            env_opt(bad)


def test_env_opt_refuses_an_alias_bomb_quickly() -> None:
    levels = ["&a0 [" + ", ".join(["x"] * 9) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = "k=[" + ", ".join(levels) + "]"  # 9**9 strings once expanded
    t0 = time.monotonic()
    with pytest.raises(argparse.ArgumentTypeError, match=r"^k: expected a YAML scalar .*alias"):
        env_opt(bomb)
    assert time.monotonic() - t0 < 5.0


def test_info_prints_params(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(ckpt)]) == 0
    lines = capsys.readouterr().out.splitlines()
    params = {ln.split()[1]: ln.split()[2] for ln in lines if ln.startswith("param ")}
    assert params["horizon"] == "8" and params["n_action_steps"] == "4"
    assert params["action_dim"] == "1" and "input_features" not in params
    assert main(["info", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["horizon"] == 8 and info["params"]["action_norm"] == "min_max"


def test_train_prints_the_final_loss_of_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    collect(TASK, episodes=2, out=data, num_envs=2, progress=False,
            env_kwargs={"max_episode_steps": 30})  # fmt: skip
    out = tmp_path / "run"
    argv = ["train", "mlp_chunk", "--data", str(data), "--out", str(out), "--steps", "8",
            "--log-every", "3", "--batch-size", "8", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    records = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 8]
    assert f"final loss {records[-1]['loss']:.6g} " in printed
    out2 = tmp_path / "run2"
    assert main([*argv[:4], "--out", str(out2), *argv[6:], "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    last = json.loads((out2 / "train_log.jsonl").read_text().splitlines()[-1])
    assert summary["final_loss"] == last["loss"]  # the mean of steps 7 and 8, as logged


def test_policies_lists_the_rest_when_a_plugin_fails_to_load(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from envactor.cli import main
    from envactor.policy.hooks import ContractError
    from envactor.registry import POLICY_REGISTRY

    real_get, real_names = POLICY_REGISTRY.get, POLICY_REGISTRY.names

    def get(name: str) -> type:
        if name == "broken_plugin":
            raise ContractError("BrokenPolicy overrides the public method 'predict'")
        return real_get(name)

    monkeypatch.setattr(POLICY_REGISTRY, "names", lambda: [*real_names(), "broken_plugin"])
    monkeypatch.setattr(POLICY_REGISTRY, "get", get)
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    assert "broken_plugin    (failed to load: ContractError: BrokenPolicy overrides" in out
    assert "flow" in out and "hooks:" in out
