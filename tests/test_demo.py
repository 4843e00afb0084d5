"""`envactor demo` end to end on tiny settings: every artefact is written and readable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from envactor import build_policy
from envactor.demo import DemoSettings, run_demo


@pytest.mark.slow
def test_demo_writes_table_plot_and_checkpoint(tmp_path: Path) -> None:
    settings = DemoSettings(
        out=tmp_path / "demo", demo_episodes=4, train_steps=4, batch_size=32, eval_episodes=2,
        num_envs=2, delays=(0, 2), executors=("sync", "naive_async", "rtc"),
    )  # fmt: skip
    rows = run_demo(settings, progress=False)
    out = settings.out
    assert [(r["executor"], r["delay"]) for r in rows] == [
        (e, d) for e in ("sync", "naive_async", "rtc") for d in (0, 2)
    ]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {"executor", "delay", "success_rate", "jerk_mean"} <= set(table[0])
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == 6 and data["expert"]["episodes"] == 2
    assert (out / "success_vs_delay.png").stat().st_size > 10_000
    policy = build_policy(out / "policy")
    assert policy.name == "flow" and policy.action_shape == (8, 1)
    held = {(r["executor"], r["delay"]): r["held_steps_mean"] for r in rows}
    assert held[("sync", 2)] > 0 and held[("rtc", 2)] == 0
