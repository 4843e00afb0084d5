"""LeRobot checkpoints through envactor's command line: ``envactor eval`` equals LeRobot's own
``select_action`` loop, ``envactor run`` drives a simulated robot with one, and ``envactor eval
--env gym_pusht/PushT-v0`` runs a random-weight LeRobot Diffusion policy made here with
LeRobot's own ``save_pretrained`` on LeRobot's simulation task with LeRobot's feature names."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lerobot.policies")

import gymnasium as gym
import torch

from envactor.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures" / "lerobot"
ACT = FIXTURES / "act"
STATE, ENV_STATE, IMAGE = "observation.state", "observation.environment_state", "observation.image"
POINT_ID = "envactor_test/LeRobotPoint-v0"


class PointEnv(gym.Env):  # type: ignore[type-arg]
    """The fixture ACT's inputs (state and environment state, 4 each): a point that drifts
    toward the action while the environment state oscillates."""

    def __init__(self, length: int = 12) -> None:
        box = gym.spaces.Box(-50.0, 50.0, (4,), np.float32)
        self.observation_space = gym.spaces.Dict({STATE: box, ENV_STATE: box})
        self.action_space = gym.spaces.Box(-50.0, 50.0, (4,), np.float32)
        self.length, self.t = length, 0
        self.x = np.zeros(4, np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        env = 1.8 + 0.3 * np.sin(0.3 * self.t + np.arange(4, dtype=np.float32))
        return {STATE: self.x.copy(), ENV_STATE: env.astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[dict, dict]:  # type: ignore[type-arg]
        super().reset(seed=seed)
        self.x = np.random.default_rng(seed).uniform(-0.4, 1.0, 4).astype(np.float32)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:  # type: ignore[type-arg]
        self.x = (0.8 * self.x + 0.2 * np.asarray(action, np.float32)).astype(np.float32)
        self.t += 1
        return self._obs(), -float(np.abs(self.x).sum()), False, self.t >= self.length, {}


if POINT_ID not in gym.registry:
    gym.register(POINT_ID, entry_point=PointEnv)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def lerobot_returns(folder: Path, seeds: list[int]) -> list[float]:
    """Episode returns of LeRobot's own ACT ``select_action`` loop (its processors, its queue)."""
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    policy = ACTPolicy.from_pretrained(folder)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(folder))
    returns = []
    for seed in seeds:
        env = PointEnv()
        obs, _ = env.reset(seed=seed)
        policy.reset()
        total, done = 0.0, False
        while not done:
            batch = pre({k: torch.from_numpy(v)[None] for k, v in obs.items()})
            batch = {k: v for k, v in batch.items() if k.startswith("observation.")}
            with torch.no_grad():
                action = post(policy.select_action(batch))[0].numpy()
            obs, reward, term, trunc, _ = env.step(action)
            total += reward
            done = term or trunc
        returns.append(total)
    return returns


def test_eval_of_a_lerobot_checkpoint_equals_lerobots_own_loop() -> None:
    argv = ["eval", str(ACT), "--env", POINT_ID, "--episodes", "3", "--num-envs", "2",
            "--seed", "4", "--json", "--no-progress"]  # fmt: skip
    code, out, err = run_cli(argv)
    assert code == 0, err
    result = json.loads(out)
    assert result["settings"]["n_action_steps"] == 5  # the checkpoint's s, LeRobot's select_action
    got = {e["episode"]: e["episode_return"] for e in result["episodes"]}
    want = lerobot_returns(ACT, [4, 5, 6])  # episode j: env seed SEED + j
    np.testing.assert_allclose([got[j] for j in range(3)], want, rtol=1e-5)
    assert len({round(r, 3) for r in want}) == 3
    code, out, _ = run_cli(["eval", str(ACT), "--env", POINT_ID, "--episodes", "1",
                            "--num-envs", "1", "--no-progress"])  # fmt: skip
    assert code == 0 and f"policy: {ACT.resolve()}" in out.splitlines()


def test_run_drives_a_simulated_robot_with_a_lerobot_checkpoint(tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    code, out, err = run_cli(["run", POINT_ID, "--ckpt", str(ACT), "--hz", "20", "--seconds",
                              "1.5", "--executor", "sync", "--no-limits", "--no-progress",
                              "--json", str(report)])  # fmt: skip
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["policy"] == str(ACT) and data["steps"] >= 5
    assert "lerobot" in out


def random_pusht_diffusion(folder: Path) -> Path:
    """A small random-weight LeRobot Diffusion policy with PushT's features (image 96x96x3,
    state 2, action 2), saved by LeRobot with its processors."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    cfg = DiffusionConfig(
        input_features={STATE: PolicyFeature(FeatureType.STATE, (2,)),
                        IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 96, 96))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        device="cpu", push_to_hub=False, pretrained_backbone_weights=None, crop_shape=None,
        down_dims=(16, 32), diffusion_step_embed_dim=16, n_obs_steps=2, horizon=8,
        n_action_steps=4, num_inference_steps=3, noise_scheduler_type="DDIM",
        spatial_softmax_num_keypoints=8,
    )  # fmt: skip
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg)
    box = {"min": np.zeros(2, np.float32), "max": np.full(2, 512.0, np.float32)}  # PushT's
    stats = {STATE: box, "action": box,
             IMAGE: {"mean": np.full((3, 1, 1), 0.5, np.float32),
                     "std": np.full((3, 1, 1), 0.25, np.float32)}}  # fmt: skip
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    for part in (policy, pre, post):
        part.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    if "type" not in config:  # draccus > 0.10.0 (LeRobot 0.4.4 pins 0.10.0) drops the choice key
        (folder / "config.json").write_text(json.dumps({"type": "diffusion", **config}, indent=4))
    return folder


def test_pusht_eval_of_a_random_lerobot_diffusion_policy(tmp_path: Path) -> None:
    pytest.importorskip("gym_pusht")
    folder = random_pusht_diffusion(tmp_path / "pretrained_model")
    argv = ["eval", str(folder), "--env", "gym_pusht/PushT-v0", "--executor", "naive_async",
            "--delay", "1", "--episodes", "2", "--num-envs", "2", "--max-episode-steps", "30",
            "--no-progress"]  # fmt: skip
    code, out, err = run_cli(argv)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("settings: executor=naive_async d=1 s=4 action_noise=n/a "
                               "episodes=2 num_envs=2 seed=0 max_episode_steps=30")  # fmt: skip
    assert lines[1] == f"policy: {folder.resolve()}"

    def value(metric: str) -> float:
        found = re.search(rf"│ {metric}\s+│\s+([-\d.]+) │", out)
        assert found is not None, out
        return float(found.group(1))

    assert 0.0 <= value("success_rate") <= 1.0
    assert np.isfinite(value("return_mean")) and value("return_mean") >= 0.0  # coverage reward
    assert value("length_mean") == 30.0 and value("episodes") == 2
