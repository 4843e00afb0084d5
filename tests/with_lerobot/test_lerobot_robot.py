"""``envactor run`` on a LeRobot ``Robot``: SimBot (tests/with_lerobot/simbot.py, a subclass of
LeRobot's Robot ABC backed by a simulated pendulum with motor-style named features and one
camera) at 50 Hz with every executor; the named action dicts it was sent; a disconnect on
every way a run can end; no ``send_action`` in a dry run; a recording that LeRobot itself opens
and that ``envactor train`` trains on; features that do not fit refused before connecting.

Runs where LeRobot is installed (.venv-lerobot: ``make test-lerobot``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lerobot.robots")

from simbot import ACTION, MOTORS, SimBot, draw_pole

from envactor.cli import main
from envactor.interop.lerobot.robot import LeRobotRobot, RobotMismatchError, check_robot_fits
from envactor.policy.build import build_policy
from envactor.runtime.executors import EXECUTORS
from envactor.runtime.realtime.controller import RealtimeController

SIMBOT = "simbot:SimBot"
LIMIT = 2.4  # the stand-in checkpoint's action stats are [-2, 2]; the default margin is 0.1


def run(ckpt: Path, *extra: str, seconds: float = 1.0) -> tuple[int, SimBot]:
    """``envactor run --robot-module simbot:SimBot`` in this process; exit code and the
    robot it made."""
    before = len(SimBot.instances)
    code = main(["run", "--robot-module", SIMBOT, "--ckpt", str(ckpt), "--hz", "50",
                 "--seconds", str(seconds), "--no-progress", *extra])  # fmt: skip
    assert len(SimBot.instances) == before + 1, "the run made no robot"
    return code, SimBot.instances[-1]


def assert_released(bot: SimBot) -> None:
    assert bot.connects == 1 and bot.disconnects == 1 and not bot.is_connected


@pytest.mark.parametrize("executor", sorted(EXECUTORS.names()))
def test_every_executor_drives_simbot_with_named_actions(
    executor: str, demo_checkpoint: Path, tmp_path: Path
) -> None:
    report = tmp_path / "run.json"
    code, bot = run(demo_checkpoint, "--executor", executor, "--json", str(report),
                    "--no-limits", seconds=1.5)  # fmt: skip
    assert code == 0
    tel = json.loads(report.read_text())
    assert tel["stop_reason"] == "duration" and tel["steps"] >= 60
    assert len(bot.sent) == tel["steps"] and bot.reads >= tel["steps"]
    assert all(list(a) == [ACTION] and isinstance(a[ACTION], float) for a in bot.sent)
    torques = np.array([a[ACTION] for a in bot.sent])
    assert np.all(np.abs(torques) <= LIMIT + 1e-6)
    assert tel["chunk_switches"] > 0
    assert_released(bot)


def test_sent_actions_are_the_written_ones(demo_checkpoint: Path) -> None:
    """The Python API: the adapter sends exactly what the controller wrote, by name."""
    from envactor.interop.lerobot.robot_config import make_robot

    policy = build_policy(demo_checkpoint)
    bot = make_robot(module=SIMBOT, options=["hz=50", "camera=false"])
    robot = LeRobotRobot(bot, low=np.array([-LIMIT]), high=np.array([LIMIT]))
    assert check_robot_fits(policy, robot) == []  # no camera: every feature is read
    ctrl = RealtimeController(policy, robot, hz=50, executor="rtc", limits=None)
    tel = ctrl.run(1.0)
    assert tel.ok and tel.steps == len(bot.sent) == len(ctrl.actions)
    np.testing.assert_array_equal(
        np.array([a[ACTION] for a in bot.sent], np.float32), ctrl.executed[:, 0]
    )
    assert_released(bot)


def test_disconnects_after_a_robot_error(demo_checkpoint: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "run.json"
    code, bot = run(demo_checkpoint, "--robot-opt", "fail_after_reads=20", "--json", str(report))
    assert code == 1
    assert "safe stop: robot_error: robot.get_observation" not in capsys.readouterr().out
    tel = json.loads(report.read_text())
    assert tel["stop_reason"] == "robot_error" and "lost the bus after 20 reads" in tel["error"]
    # 19 steps after the first chunk's read, then the safe action (the last one held)
    assert len(bot.sent) == tel["steps"] == 20
    assert bot.sent[-1] == bot.sent[-2]
    assert_released(bot)


def test_disconnects_after_a_health_limit_stop(demo_checkpoint: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # every read takes longer than the 20 ms period: each step misses its deadline
    code, bot = run(demo_checkpoint, "--robot-opt", "read_delay_s=0.03", "--limit-grace", "0.2")
    assert code == 1
    err = capsys.readouterr().err
    assert "missed" in err and "health check" in err
    assert_released(bot)


def test_disconnects_when_the_first_chunk_fails(demo_checkpoint: Path) -> None:
    from envactor.interop.lerobot.robot_config import make_robot
    from envactor.runtime.realtime.session import run_session

    policy = build_policy(demo_checkpoint)
    bot = make_robot(module=SIMBOT, options=["camera=false"])
    ctrl = RealtimeController(policy, LeRobotRobot(bot), hz=50, executor="sync")

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the GPU fell off")

    ctrl.rules.infer = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="first chunk failed: the GPU fell off"):
        run_session(ctrl, 1.0)
    assert_released(bot)


def _interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_disconnects_on_ctrl_c_during_a_run(demo_checkpoint: Path, tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    timer = _interrupt_after(0.8)
    try:
        code, bot = run(demo_checkpoint, "--json", str(report), seconds=20)
    finally:
        timer.cancel()
    tel = json.loads(report.read_text())
    assert tel["stop_reason"] == "signal:SIGINT" and tel["steps"] < 200
    assert code == 0  # a clean stop asked for by the operator
    assert_released(bot)


def test_ctrl_c_between_episodes_keeps_the_recording(demo_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "rec"
    timer = _interrupt_after(1.6)  # 1 s run, then the 10 s reset pause
    try:
        code, bot = run(demo_checkpoint, "--episodes", "3", "--record", str(root), seconds=1.0)
    finally:
        timer.cancel()
    assert code == 0  # a stop the operator asked for, as during a run
    assert_released(bot)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 1 and info["total_frames"] == len(bot.sent)


def test_dry_run_never_sends(demo_checkpoint: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    code, bot = run(demo_checkpoint, "--dry-run", "--log", str(log), seconds=1.0)
    assert code == 0
    assert bot.sent == [] and bot.reads >= 50
    assert_released(bot)
    rows = (log / "steps.csv").read_text().splitlines()
    assert rows[0].split(",")[-2:] == [f"proposed.{ACTION}", f"written.{ACTION}"]  # no "sent"
    steps = json.loads((log / "telemetry.json").read_text())[0]["steps"]
    assert len(rows) - 1 == steps >= 50
    assert (log / "actions.png").stat().st_size > 10_000


def test_recording_opens_in_lerobot_and_trains(demo_checkpoint: Path, tmp_path: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "rec"
    code, bot = run(demo_checkpoint, "--record", str(root), "--record-task", "swing up",
                    "--episodes", "2", "--reset-seconds", "0.2", seconds=1.0)  # fmt: skip
    assert code == 0
    ds = LeRobotDataset("envactor/simbot", root=root, video_backend="torchcodec")
    assert ds.num_episodes == 2 and len(ds) == len(bot.sent)
    feats = ds.meta.features
    assert feats["observation.state"]["names"] == list(MOTORS)
    assert feats["action"]["names"] == [ACTION]
    assert feats["observation.images.front"]["dtype"] == "video"
    sent = np.array([a[ACTION] for a in bot.sent], np.float32)
    actions = np.array([float(ds[i]["action"]) for i in range(len(ds))], np.float32)
    np.testing.assert_array_equal(actions, sent)  # the action column is what the robot got
    item = ds[len(ds) - 1]
    assert item["task"] == "swing up" and bool(item["next.done"])
    assert int(item["envactor.chunk"]) >= 1 and int(item["envactor.weight_version"]) == 0
    state = item["observation.state"].numpy()
    image = (item["observation.images.front"].permute(1, 2, 0).numpy() * 255).round()
    drawn = draw_pole(float(state[0]), float(state[1])).astype(np.float32)
    assert np.abs(image - drawn).mean() < 6.0  # H.264 keeps the drawn pole (lossy, CRF 18)
    out = tmp_path / "train"
    assert main(["train", "flow", "--data", str(root), "--out", str(out), "--steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0  # fmt: skip
    trained = build_policy(out / "checkpoints" / "last")
    assert trained.input_features["observation.state"].names == MOTORS
    assert trained.params.action_names == (ACTION,)


def test_mismatched_features_are_refused_before_connecting(
    demo_checkpoint: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    code, bot = run(Path("flow"), "-o", "policy.params.action_dim=2")  # untrained, A = 2
    assert code == 2 and bot.connects == 0
    (err,) = capsys.readouterr().err.strip().splitlines()  # one line, before anything else
    assert err.startswith("envactor run: error: ")
    assert "does not fit policy" in err and "the policy outputs 2 values" in err
    assert "Robot gives: {'observation.state': 'float32 (3,)'" in err

    act = Path(__file__).parent.parent / "fixtures" / "lerobot" / "act"  # stats for A = 4
    code, bot = run(act)
    assert code == 2 and bot.connects == 0
    err = capsys.readouterr().err
    assert "observation.environment_state: the policy reads float32 (4,), the robot gives no" in err
    assert "action: the policy outputs 4 values, the robot takes 1 ['pendulum.torque']" in err

    renamed = {"observation.state": {"shape": [3], "norm": "mean_std", "names": ["b", "a", "c"]}}
    policy = build_policy(
        demo_checkpoint, overrides=[f"policy.params.input_features={json.dumps(renamed)}"]
    )
    robot = LeRobotRobot(SimBot(SimBot.config_class()))
    with pytest.raises(RobotMismatchError, match=r"trained on entries \['b', 'a', 'c'\]"):
        check_robot_fits(policy, robot)


def test_robot_type_from_lerobots_registry(demo_checkpoint: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["run", "--ckpt", str(demo_checkpoint), "--hz", "50", "--seconds", "0.5",
            "--no-progress", "--robot"]  # fmt: skip
    before = len(SimBot.instances)
    assert main([*args, "envactor_simbot", "--robot-opt", "camera=false"]) == 0  # via registry
    assert_released(SimBot.instances[before])
    assert main([*args, "so101_folower"]) == 2
    assert "did you mean 'so101_follower'" in capsys.readouterr().err
    assert main([*args, "so101_follower", "--robot-opt", "prot=/dev/null"]) == 2
    assert "has no option 'prot'; did you mean 'port'" in capsys.readouterr().err
