"""LeRobot checkpoints as envactor policies, checked against LeRobot's own outputs.

The fixtures (tests/fixtures/lerobot: ACT and Diffusion checkpoints written by LeRobot 0.4.4 and
reference outputs LeRobot computed from them) are used as they are. Skipped where LeRobot is not
installed (the main .venv); ``make test-lerobot`` runs them in .venv-lerobot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lerobot.policies")

import gymnasium as gym
import torch

from envactor import build_policy
from envactor.interop.lerobot import LeRobotPolicy
from envactor.policy.contract import check_policy_class
from envactor.runtime.actor import VectorActor
from envactor.runtime.executors import make_executor

FIXTURES = Path(__file__).parent.parent / "fixtures" / "lerobot"
REF_DIR = FIXTURES / "reference"
STATE, ENV_STATE = "observation.state", "observation.environment_state"


@pytest.fixture(scope="module")
def act() -> LeRobotPolicy:
    policy = build_policy(FIXTURES / "act")
    assert isinstance(policy, LeRobotPolicy)
    return policy


@pytest.fixture(scope="module")
def diffusion() -> LeRobotPolicy:
    policy = build_policy(FIXTURES / "diffusion")
    assert isinstance(policy, LeRobotPolicy)
    return policy


def ref(name: str) -> dict[str, np.ndarray]:
    with np.load(REF_DIR / f"{name}.npz") as f:
        return dict(f)


def obs(state: np.ndarray, env_state: np.ndarray) -> dict[str, np.ndarray]:
    return {STATE: state, ENV_STATE: env_state}


def history_frame(r: dict[str, np.ndarray], t: int, copies: int) -> dict[str, np.ndarray]:
    """Frame ``t`` of the reference's one-row sample history, repeated for ``copies`` envs."""
    return obs(
        np.repeat(r["samples_obs_state"][:, t], copies, 0),
        np.repeat(r["samples_obs_env_state"][:, t], copies, 0),
    )


def test_params_come_from_the_lerobot_config(act: LeRobotPolicy, diffusion: LeRobotPolicy) -> None:
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    check_policy_class("lerobot", LeRobotPolicy)  # the contract registration enforces
    assert isinstance(act.components["model"], ACTPolicy)
    assert isinstance(diffusion.components["model"], DiffusionPolicy)
    assert (act.action_shape, act.params.n_action_steps, act.n_obs_steps) == ((10, 4), 5, 1)
    assert (diffusion.action_shape, diffusion.params.n_action_steps) == ((8, 4), 8)
    assert diffusion.n_obs_steps == 2 and not act.trainable
    for p in (act, diffusion):
        assert {k: (s.shape, s.norm) for k, s in p.input_features.items()} == {
            STATE: ((4,), "identity"),
            ENV_STATE: ((4,), "identity"),
        }
        assert p.normalizer is not None and set(p.normalizer.modes.values()) == {"identity"}
        assert p.config["lerobot"]["type"] == p.lerobot_type


def test_act_chunks_equal_lerobots(act: LeRobotPolicy) -> None:
    r = ref("act")
    for i in range(len(r["chunk"])):  # 6 batches of B = 3
        out = act.predict(obs(r["obs_state"][i], r["obs_env_state"][i]))
        assert out.shape == (3, 10, 4)
        np.testing.assert_allclose(out, r["chunk"][i], rtol=0, atol=1e-5)


def test_act_select_action_and_sync_executor_reproduce_lerobots_stream(
    act: LeRobotPolicy,
) -> None:
    r = ref("act")
    want = r["select_actions"][:, 0]  # (12, 4): chunks at t = 0, 5, 10
    act.reset()
    got = [act.select_action(obs(r["select_obs_state"][t], r["select_obs_env_state"][t]))[0]
           for t in range(12)]  # fmt: skip
    np.testing.assert_allclose(np.stack(got), want, rtol=0, atol=1e-5)
    ex = make_executor("sync", act)
    assert ex.s == 5
    got = [ex.act({"e": obs(r["select_obs_state"][t, 0], r["select_obs_env_state"][t, 0])})["e"]
           for t in range(12)]  # fmt: skip
    np.testing.assert_allclose(np.stack(got), want, rtol=0, atol=1e-5)
    assert ex.episode_stats("e")["requests"] == 3


def test_diffusion_chunks_equal_lerobots_with_history_fed_step_by_step(
    diffusion: LeRobotPolicy,
) -> None:
    r = ref("diffusion")
    for i in range(len(r["chunk"])):  # 3 histories of B = 2, T = 2 steps, oldest first
        diffusion.reset()
        diffusion.queue_prior_noise({e: r["chunk_noise"][i, e] for e in range(2)})
        diffusion.observe(obs(r["hist_obs_state"][i, :, 0], r["hist_obs_env_state"][i, :, 0]))
        out = diffusion.predict(obs(r["hist_obs_state"][i, :, 1], r["hist_obs_env_state"][i, :, 1]))
        assert out.shape == (2, 8, 4)
        np.testing.assert_allclose(out, r["chunk"][i], rtol=0, atol=1e-5)
    diffusion.reset()  # without the first frame the history is the current one twice
    diffusion.queue_prior_noise({e: r["chunk_noise"][0, e] for e in range(2)})
    out = diffusion.predict(obs(r["hist_obs_state"][0, :, 1], r["hist_obs_env_state"][0, :, 1]))
    assert np.abs(out - r["chunk"][0]).max() > 1e-3


def test_diffusion_select_stream_through_select_action_and_the_sync_executor(
    diffusion: LeRobotPolicy,
) -> None:
    r = ref("diffusion")
    want = r["select_actions"][:, 0]  # chunks at t = 0 (obs 0 twice) and t = 8 (obs 7, 8)
    noise = np.stack([r["select_noise"][0, 0], r["select_noise"][8, 0]])
    diffusion.reset()
    diffusion.queue_prior_noise({0: noise})
    got = [diffusion.select_action(obs(r["select_obs_state"][t], r["select_obs_env_state"][t]))[0]
           for t in range(12)]  # fmt: skip
    np.testing.assert_allclose(np.stack(got), want, rtol=0, atol=1e-5)
    ex = make_executor("sync", diffusion)
    diffusion.queue_prior_noise({"e": noise})
    got = [ex.act({"e": obs(r["select_obs_state"][t, 0], r["select_obs_env_state"][t, 0])})["e"]
           for t in range(12)]  # fmt: skip
    np.testing.assert_allclose(np.stack(got), want, rtol=0, atol=1e-5)


def test_diffusion_replays_lerobots_64_samples_from_their_noise(diffusion: LeRobotPolicy) -> None:
    r = ref("diffusion")
    ids = list(range(64))
    diffusion.reset()
    diffusion.queue_prior_noise({e: r["samples_noise"][e] for e in ids})
    diffusion.observe(history_frame(r, 0, 64), env_ids=ids)
    out = diffusion.predict(history_frame(r, 1, 64), env_ids=ids)
    np.testing.assert_allclose(out, r["samples"], rtol=0, atol=1e-5)


def test_diffusion_sample_statistics_match_lerobots(diffusion: LeRobotPolicy) -> None:
    """64 chunks from envactor's per-env generators (seeds 1000..1063, not LeRobot's seeds) vs
    LeRobot's 64 reference samples. Chunks are the independent units (the 8 steps of one chunk
    are strongly correlated), so the standard error SE of each per-dimension mean is the std of
    the 64 chunk means / 8, and that of each per-dimension std is bootstrapped over the 64
    reference chunks. Two independent estimates differ by sqrt(2) SE on average: the bound is
    4 sqrt(2) SE per dimension (a 4-sigma band)."""
    r = ref("diffusion")
    ids = list(range(64))
    diffusion.reset()
    diffusion.set_env_seeds({e: 1000 + e for e in ids})
    diffusion.observe(history_frame(r, 0, 64), env_ids=ids)
    mine = diffusion.predict(history_frame(r, 1, 64), env_ids=ids)
    theirs = r["samples"]  # (64, 8, 4)
    assert not np.allclose(mine, theirs, atol=1e-3)  # different noise: a real comparison
    np.testing.assert_allclose(theirs.mean((0, 1)), r["samples_mean_per_dim"], atol=1e-6)
    np.testing.assert_allclose(theirs.std((0, 1)), r["samples_std_per_dim"], atol=1e-6)
    se_mean = theirs.mean(1).std(0, ddof=1) / np.sqrt(64)
    rng = np.random.default_rng(0)
    boot = [theirs[rng.integers(0, 64, 64)].std((0, 1)) for _ in range(2000)]
    se_std = np.std(boot, axis=0)
    bound = 4 * np.sqrt(2)
    assert np.all(np.abs(mine.mean((0, 1)) - r["samples_mean_per_dim"]) <= bound * se_mean)
    assert np.all(np.abs(mine.std((0, 1)) - r["samples_std_per_dim"]) <= bound * se_std)


class StateEnv(gym.Env):  # type: ignore[type-arg]
    """LeRobot-named observations of a 4-d point that drifts toward the action."""

    def __init__(self, low: np.ndarray, high: np.ndarray, length: int) -> None:
        box = gym.spaces.Box(-10.0, 10.0, (4,), np.float32)
        self.observation_space = gym.spaces.Dict({STATE: box, ENV_STATE: box})
        self.action_space = gym.spaces.Box(low, high, (4,), np.float32)
        self.length = length
        self.x = np.zeros(4, np.float32)
        self.t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        phase = np.float32(0.3 * self.t)
        env = 1.8 + 0.3 * np.sin(phase + np.arange(4, dtype=np.float32))
        return {STATE: self.x.copy(), ENV_STATE: env.astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[dict, dict]:
        self.x = np.random.default_rng(seed).uniform(-0.4, 1.0, 4).astype(np.float32)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        assert self.action_space.contains(np.asarray(action, np.float32))
        self.x = (0.8 * self.x + 0.2 * np.asarray(action, np.float32)).astype(np.float32)
        self.t += 1
        return self._obs(), -float(np.abs(self.x).sum()), False, self.t >= self.length, {}


@pytest.mark.parametrize(
    ("executor", "kwargs"),
    [
        ("sync", {}),
        ("sync", {"delay": 2}),
        ("naive_async", {"delay": 2, "n_action_steps": 4}),
        ("temporal_ensemble", {"delay": 1}),
        ("blend", {"delay": 2, "n_action_steps": 4}),
        ("rtc", {"delay": 1, "n_action_steps": 4}),  # no guidance hook: the blend
    ],
)
def test_diffusion_runs_under_every_executor_without_guidance(
    diffusion: LeRobotPolicy, executor: str, kwargs: dict[str, Any]
) -> None:
    stats = diffusion.postprocessor.steps[0].stats["action"]
    low, high = np.asarray(stats["min"], np.float32), np.asarray(stats["max"], np.float32)
    envs = {e: StateEnv(low, high, length=10 + 3 * e) for e in range(2)}
    diffusion.reset()
    eps = VectorActor(diffusion, executor, **kwargs).run(envs, 3, seed=7, record=True)
    assert sorted(m.episode for m in eps) == [0, 1, 2]
    for m in eps:
        acts = m.trajectory["action"]  # type: ignore[index]
        assert len(acts) == m.length and m.requests >= 2
        assert np.isfinite(acts).all()
        assert (acts >= low - 1e-5).all() and (acts <= high + 1e-5).all()
        assert np.ptp(acts, axis=0).max() > 1e-3  # not one held action


def test_weights_stream_into_a_second_copy(diffusion: LeRobotPolicy) -> None:
    r = ref("diffusion")
    other = build_policy(FIXTURES / "diffusion")
    with torch.no_grad():
        for p in other.components["model"].parameters():
            p.add_(0.05)
    acting = diffusion.acting_state_dict()
    state = {f"{c}.{k}": v for c, sd in acting.items() for k, v in sd.items()}
    assert all(k.startswith("model.") for k in state)
    report = other.load_weights(state, version=3)
    assert other.weight_version == 3 and not report.missing
    frame = obs(r["hist_obs_state"][0, :, 1], r["hist_obs_env_state"][0, :, 1])
    outs = []
    for p in (diffusion, other):
        p.reset()
        p.queue_prior_noise({e: r["chunk_noise"][0, e] for e in range(2)})
        outs.append(p.predict(frame))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_warmup_and_mode_views(act: LeRobotPolicy, diffusion: LeRobotPolicy) -> None:
    r = ref("act")
    for p in (act, diffusion):
        p.warmup(batch_size=2)
    first = {e: obs(r["select_obs_state"][0, 0], r["select_obs_env_state"][0, 0]) for e in "ab"}
    actions = act.eval_mode.forward(first)
    np.testing.assert_allclose(actions["a"], r["select_actions"][0, 0], atol=1e-5)


def random_image_diffusion(tmp_path: Path) -> Path:
    """A small random-weight LeRobot Diffusion policy with one camera, saved by LeRobot."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    cfg = DiffusionConfig(
        input_features={
            STATE: PolicyFeature(FeatureType.STATE, (2,)),
            "observation.image": PolicyFeature(FeatureType.VISUAL, (3, 24, 32)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        device="cpu", push_to_hub=False, pretrained_backbone_weights=None, crop_shape=None,
        down_dims=(16, 32), diffusion_step_embed_dim=16, n_obs_steps=2, horizon=8,
        n_action_steps=4, num_inference_steps=3, noise_scheduler_type="DDIM",
        spatial_softmax_num_keypoints=8,
    )  # fmt: skip
    torch.manual_seed(3)
    policy = DiffusionPolicy(cfg)
    stats = {
        STATE: {"min": np.array([-1.0, -2.0], np.float32), "max": np.array([1.0, 2.0], np.float32)},
        "action": {"min": np.full(2, -3.0, np.float32), "max": np.full(2, 3.0, np.float32)},
        "observation.image": {"mean": np.full((3, 1, 1), 0.5, np.float32),
                              "std": np.full((3, 1, 1), 0.25, np.float32)},
    }  # fmt: skip
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    out = tmp_path / "pretrained_model"
    for part in (policy, pre, post):
        part.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    if "type" not in config:  # draccus > 0.10.0 (LeRobot 0.4.4 pins 0.10.0) drops the choice key
        (out / "config.json").write_text(json.dumps({"type": "diffusion", **config}, indent=4))
    return tmp_path


def test_camera_frames_go_in_as_uint8_hwc_like_lerobots_env_wrapper(tmp_path: Path) -> None:
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    step_dir = random_image_diffusion(tmp_path)
    policy = build_policy(step_dir)  # a training step folder holding pretrained_model/
    spec = policy.input_features["observation.image"]
    assert (spec.shape, spec.dtype) == ((24, 32, 3), "uint8") and policy.n_obs_steps == 2
    folder = step_dir / "pretrained_model"
    theirs = DiffusionPolicy.from_pretrained(folder)
    pre, post = make_pre_post_processors(theirs.config, pretrained_path=str(folder))
    rng = np.random.default_rng(0)
    noise = torch.randn(2, 1, 8, 2, generator=torch.Generator().manual_seed(5))
    policy.queue_prior_noise({0: noise[:, 0]})
    theirs.reset()
    for t in range(6):
        img = rng.integers(0, 256, (1, 24, 32, 3), dtype=np.uint8)
        state = rng.normal(size=(1, 2)).astype(np.float32)
        mine = policy.select_action({STATE: state, "observation.image": img})
        lerobot_img = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255  # their wrapper
        batch = pre({STATE: torch.from_numpy(state), "observation.image": lerobot_img})
        batch = {k: v for k, v in batch.items() if k.startswith("observation.")}
        with torch.no_grad():
            action = post(theirs.select_action(batch, noise=noise[t // 4]))
        np.testing.assert_allclose(mine, action.numpy(), atol=1e-5)


def test_rollout_worker_runs_a_lerobot_checkpoint_shipped_as_bytes() -> None:
    """The Ray rollout worker's code path (in process): the checkpoint travels as file bytes,
    is materialized and built on the worker, and runs episodes by id with history."""
    from envactor.distributed.worker import Episode, RolloutWorker, checkpoint_files

    env_id = "envactor_test/LeRobotState-v0"
    if env_id not in gym.registry:
        gym.register(
            id=env_id,
            entry_point=StateEnv,
            kwargs={"low": np.full(4, -5, np.float32), "high": np.full(4, 5, np.float32),
                    "length": 12},
        )  # fmt: skip
    files = checkpoint_files(FIXTURES / "diffusion")
    worker = RolloutWorker("w0", files, env_id, num_envs=2, executor="naive_async",
                           executor_kwargs={"delay": 1, "n_action_steps": 4})  # fmt: skip
    try:
        assert worker.policy.n_obs_steps == 2
        episodes = [e for e in worker.rollout([0, 1, 2], seed=3) if isinstance(e, Episode)]
    finally:
        worker.close()
    assert sorted(e.metrics["episode"] for e in episodes) == [0, 1, 2]
    for e in episodes:
        actions = e.trajectory["action"]
        assert actions.shape == (12, 4) and np.isfinite(actions).all()
