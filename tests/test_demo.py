"""`envactor demo` end to end on tiny settings: every artefact is written and readable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from envactor import build_policy
from envactor.demo import DemoSettings, run_demo
from envactor.envs import task_spec


@pytest.mark.slow
def test_demo_writes_table_plot_and_checkpoint(tmp_path: Path) -> None:
    settings = DemoSettings(
        out=tmp_path / "demo", demo_episodes=4, train_steps=4, batch_size=32, eval_episodes=2,
        num_envs=2, delays=(0, 2), executors=("sync", "naive_async", "rtc", "rtc_trained"),
    )  # fmt: skip
    rows = run_demo(settings, progress=False)
    out = settings.out
    executors = ("sync", "naive_async", "rtc", "rtc_trained")
    assert [(r["executor"], r["delay"]) for r in rows] == [
        (e, d) for e in executors for d in (0, 2)
    ]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {"executor", "delay", "success_rate", "jerk_mean"} <= set(table[0])
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == 8 and data["expert"]["episodes"] == 2
    assert (out / "success_vs_delay.png").stat().st_size > 10_000
    policy = build_policy(out / "policy")
    assert policy.name == "flow" and policy.action_shape == (8, 1)
    assert policy.params.prefix_max_delay == 4  # type: ignore[attr-defined]  # training-time RTC
    held = {(r["executor"], r["delay"]): r["held_steps_mean"] for r in rows}
    assert held[("sync", 2)] > 0 and held[("rtc", 2)] == 0


def test_demo_expert_perturbation_is_in_the_recorded_action() -> None:
    """``perturb_std``: the expert's own torque plus seeded noise (its 2nd draw), clipped."""
    config = task_spec("envactor/PendulumSwingUp-v0")["expert_config"]
    clean = build_policy(config)
    noisy = build_policy(config, overrides=["policy.params.perturb_std=0.5"])
    theta = np.array([0.1, -0.15, 0.05, 0.0])  # balance region: unclipped LQR torques
    obs = {"observation.state": np.stack([np.cos(theta), np.sin(theta), 0 * theta], 1)}
    ids = [0, 1, 2, 3]
    seeds = {e: 40 + e for e in ids}
    clean.set_env_seeds(seeds)
    noisy.set_env_seeds(seeds)
    u = clean.predict(obs, env_ids=ids)[:, 0, 0]
    got = noisy.predict(obs, env_ids=ids)[:, 0, 0]
    draws = []
    for e in ids:
        gen = torch.Generator().manual_seed(seeds[e])
        torch.randn((1,), generator=gen)  # the swing direction comes first
        draws.append(float(torch.randn((1,), generator=gen)))
    np.testing.assert_allclose(got, np.clip(u + 0.5 * np.array(draws), -2, 2), atol=1e-5)
    np.testing.assert_allclose(u, -10.31 * theta, atol=1e-5)
