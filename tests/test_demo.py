"""`envactor demo` end to end on tiny settings: every artefact is written and readable, the
eval commands it writes reproduce its cells, and a re-run replaces the outputs as one unit."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from envactor import build_policy
from envactor.cli import main
from envactor.demo import DemoSettings, clean_stale, print_table, run_demo
from envactor.envs import task_spec

EXECUTORS = ("sync", "naive_async", "rtc", "rtc_trained")
TINY: dict[str, Any] = dict(
    demo_episodes=4, train_steps=4, batch_size=32, eval_episodes=2, num_envs=2, delays=(0, 2),
    executors=EXECUTORS,
)  # fmt: skip


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoSettings, list, str]:
    """One tiny smoke-test demo (``quick()`` shrunk further); its rows and printed output."""
    out = tmp_path_factory.mktemp("first") / "runs" / "demo"
    settings = DemoSettings.quick(out=out, **TINY)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = run_demo(settings, progress=False)
    return settings, rows, printed.getvalue()


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def leftovers(out: Path) -> list[str]:
    """Staging or aside folders of ``out`` left in its parent."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}-"))


@pytest.mark.slow
def test_demo_writes_table_plot_and_checkpoint(first_run: tuple[DemoSettings, list, str]) -> None:
    settings, rows, _ = first_run
    out = settings.out
    assert [(r["executor"], r["delay"]) for r in rows] == [
        (e, d) for e in EXECUTORS for d in (0, 2)
    ]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {"executor", "delay", "success_rate", "jerk_mean"} <= set(table[0])
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == 8 and data["expert"]["episodes"] == 2
    assert data["settings"]["out"] == str(out)  # the final folder, not the staging one
    assert (out / "success_vs_delay.png").stat().st_size > 10_000
    policy = build_policy(out / "policy")
    assert policy.name == "flow" and policy.action_shape == (8, 1)
    assert policy.params.prefix_max_delay == 4  # type: ignore[attr-defined]  # training-time RTC
    held = {(r["executor"], r["delay"]): r["held_steps_mean"] for r in rows}
    assert held[("sync", 2)] > 0 and held[("rtc", 2)] == 0
    assert leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["dataset", "eval_commands.txt", "policy", "results.csv", "results.json",
         "success_vs_delay.png", "train"]
    )  # fmt: skip


@pytest.mark.slow
def test_quick_demo_says_smoke_test(first_run: tuple[DemoSettings, list, str]) -> None:
    settings, _, printed = first_run
    data = json.loads((settings.out / "results.json").read_text())
    assert data["smoke_test"] is True and "not results" in data["note"]
    assert "SMOKE TEST" in printed and "not results" in printed
    assert DemoSettings().smoke_test is False and DemoSettings.quick().smoke_test is True


@pytest.mark.slow
def test_demo_eval_command_reproduces_its_cell(
    first_run: tuple[DemoSettings, list, str], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, rows, printed = first_run
    lines = (settings.out / "eval_commands.txt").read_text().splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    assert len(commands) == len(rows)
    cell = [(r["executor"], r["delay"]) for r in rows].index(("rtc", 2))
    argv = shlex.split(commands[cell])
    assert argv[:3] == ["envactor", "eval", str(settings.out / "policy")]
    assert commands[cell] in printed  # shown below the table
    opts = dict(zip(argv[3::2], argv[4::2]))
    assert opts["--n-action-steps"] == "2" and opts["--action-noise"] == "0.1"
    assert opts["--executor"] == "rtc" and opts["--delay"] == "2" and opts["--seed"] == "10000"
    capsys.readouterr()
    assert main([*argv[1:], "--json", "--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["summary"]["success_rate"] == rows[cell]["success_rate"]
    assert got["summary"]["return_mean"] == rows[cell]["return_mean"]
    assert got["settings"]["n_action_steps"] == 2 and got["settings"]["action_noise_std"] == 0.1


@pytest.mark.slow
def test_demo_rerun_replaces_previous_outputs(
    first_run: tuple[DemoSettings, list, str], tmp_path: Path
) -> None:
    settings, rows, _ = first_run
    out = tmp_path / "runs" / "demo"
    shutil.copytree(settings.out, out)
    (out / "policy" / "from_first_run.txt").write_text("x")
    again = DemoSettings.quick(out=out, **TINY)
    with contextlib.redirect_stdout(io.StringIO()):
        rows2 = run_demo(again, progress=False)
    assert not (out / "policy" / "from_first_run.txt").exists()  # replaced as a whole
    assert rows2 == rows  # same seed, same numbers
    assert build_policy(out / "policy").name == "flow"
    assert leftovers(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_failed_rerun_keeps_previous_outputs(
    first_run: tuple[DemoSettings, list, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: type[BaseException],
) -> None:
    settings, _, _ = first_run
    out = tmp_path / "runs" / "demo"
    shutil.copytree(settings.out, out)
    before = tree_digest(out)

    def train_fails(*args: Any, **kwargs: Any) -> None:
        raise failure("train phase failed")

    monkeypatch.setattr("envactor.train.train", train_fails)
    with pytest.raises(failure, match="train phase failed"):
        run_demo(DemoSettings.quick(out=out, **TINY), progress=False)
    assert tree_digest(out) == before  # dataset, policy and results untouched
    assert leftovers(out) == []


def test_demo_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        run_demo(DemoSettings.quick(out=out, **TINY), progress=False)
    assert (out / "notes.txt").read_text() == "keep me" and leftovers(out) == []


def test_stale_staging_of_dead_runs_is_cleaned(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "demo"
        for name in (f".demo-staging-{dead.pid}", f".demo-staging-{alive.pid}",
                     f".demo-old-{dead.pid}", ".demo-staging-x", ".other-staging-1"):  # fmt: skip
            (tmp_path / name).mkdir()
        (tmp_path / f".demo-old-{dead.pid}" / "results.csv").write_text("old")
        clean_stale(out)
        # the dead run's staging is removed; a swap that died half-way is put back
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f".demo-staging-{alive.pid}", ".demo-staging-x", ".other-staging-1", "demo"]
        )
        assert (out / "results.csv").read_text() == "old"
    finally:
        alive.kill()
        alive.wait()


def test_demo_table_is_not_cut_at_80_columns_or_piped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    rows = [
        {"executor": e, "delay": 4, "success_rate": 0.5, "return_mean": -1234.5,
         "jerk_mean": 0.1234, "held_steps_mean": 100.0}
        for e in ("temporal_ensemble", "rtc_identity")
    ]  # fmt: skip
    meta = {
        "task": "envactor/PendulumSwingUp-v0",
        "expert": {"success_rate": 1.0, "return_mean": -300.0},
        "timings_s": {"collect_s": 1.0},
        "settings": {"out": "runs/demo"},
        "eval_commands": ["envactor eval runs/demo/policy --executor temporal_ensemble " * 3] * 2,
    }
    print_table(rows, meta)
    text = capsys.readouterr().out
    assert "…" not in text
    for word in ("temporal_ensemble", "rtc_identity", "success_rate", "held_steps_mean",
                 "-1234.5", meta["eval_commands"][0].strip()):  # fmt: skip
        assert word in text
    header = next(line for line in text.splitlines() if "executor" in line)
    assert len(header) > 80  # wider than COLUMNS: printed whole rather than cut


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


def test_no_pid_reuse_confusion_for_own_pid(tmp_path: Path) -> None:
    """A staging folder named with this process's pid is a dead run's (pid reuse): cleaned."""
    (tmp_path / f".demo-staging-{os.getpid()}").mkdir()
    clean_stale(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_demo_bid_uses_an_earlier_checkpoint_and_its_command_reproduces_the_cell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs" / "demo"
    settings = DemoSettings.quick(out=out, **{**TINY, "executors": ("bid",), "delays": (2,),
                                              "weak_step": 2, "bid_samples": 3})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        rows = run_demo(settings, progress=False)
    weak = out / "train" / "checkpoints" / "step_000002" / "policy"
    assert build_policy(weak).name == "flow"  # the weak policy: the run's checkpoint at step 2
    lines = (out / "eval_commands.txt").read_text().splitlines()
    argv = shlex.split(next(c for c in lines if not c.startswith("#")))
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "--executor-opt"]
    assert opts == ["num_samples=3", "mode_size=3", f"weak={weak}"]
    capsys.readouterr()
    assert main([*argv[1:], "--json", "--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["summary"]["return_mean"] == rows[0]["return_mean"]
