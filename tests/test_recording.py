"""Recording a real-time run (``envactor run --record``), its step log (``--log``), dry runs,
and the pieces under them: episodes written frame by frame, feature names carried from a
dataset into a policy, action limits from a checkpoint's stats, the controller's step hook.
(A LeRobot robot itself: tests/with_lerobot/test_lerobot_robot.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from envactor.cli import main
from envactor.data.format import DatasetError, Feature
from envactor.data.lerobot_dataset import LeRobotDataset
from envactor.data.lerobot_writer import LeRobotWriter
from envactor.policy.build import build_policy
from envactor.policy.specs import FeatureSpec, PolicyParams
from envactor.runtime.realtime.clock import VirtualClock
from envactor.runtime.realtime.controller import RealtimeController
from envactor.runtime.realtime.recorder import DatasetRecorder, RecordingError
from envactor.runtime.realtime.robot import DryRun, SimulatedRobot
from envactor.runtime.realtime.safety import auto_max_delta, limits_from_stats

TASK = "envactor/PendulumSwingUp-v0"
CAM = "observation.images.cam"


def _episode(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observation.state": rng.normal(size=(n, 3)).astype(np.float32),
        CAM: rng.integers(0, 256, size=(n, 16, 24, 3), dtype=np.uint8),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
    }


FEATURES = {
    "observation.state": Feature((3,), "float32", ("x", "y", "z")),
    CAM: {"shape": [16, 24, 3], "dtype": "video"},
    "action": Feature((2,), "float32", ("left", "right")),
}


def test_streamed_episodes_equal_whole_ones(tmp_path: Path) -> None:
    episodes = [_episode(7, 0), _episode(5, 1)]
    with LeRobotWriter(tmp_path / "whole", FEATURES, 20) as w:
        for ep in episodes:
            w.add_episode(ep)
    w = LeRobotWriter(tmp_path / "streamed", FEATURES, 20)
    for ep in episodes:
        stream = w.stream_episode()
        with pytest.raises(DatasetError, match="an episode stream is open"):
            w.add_episode(ep)
        for t in range(len(ep["action"])):
            stream.add({k: v[t] for k, v in ep.items()})
        assert stream.close() == len(w.episodes) - 1
    assert w.stream_episode().close() is None  # an empty stream writes nothing
    w.close()
    whole, streamed = LeRobotDataset(tmp_path / "whole"), LeRobotDataset(tmp_path / "streamed")
    assert streamed.num_episodes == 2 and streamed.num_frames == 12
    for i in range(2):
        a, b = whole.episode(i), streamed.episode(i)
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for name in ("stats.json", "info.json"):
        assert (tmp_path / "whole/meta" / name).read_text() == (
            tmp_path / "streamed/meta" / name
        ).read_text()


def test_stream_refuses_a_bad_frame_naming_it(tmp_path: Path) -> None:
    w = LeRobotWriter(tmp_path / "d", FEATURES, 20)
    stream = w.stream_episode()
    frame = {k: v[0] for k, v in _episode(1, 0).items()}
    stream.add(frame)
    with pytest.raises(DatasetError, match=r"episode 0, frame 1: 'action' expected shape \(T, 2\)"):
        stream.add({**frame, "action": np.zeros(3, np.float32)})
    with pytest.raises(DatasetError, match=r"missing \['action'\]"):
        stream.add({k: v for k, v in frame.items() if k != "action"})
    w.abort()


def test_feature_names_round_trip_into_a_policy(tmp_path: Path) -> None:
    with LeRobotWriter(tmp_path / "d", FEATURES, 20) as w:
        w.add_episode(_episode(40, 0))
    info = json.loads((tmp_path / "d/meta/info.json").read_text())
    assert info["features"]["action"]["names"] == ["left", "right"]
    ds = LeRobotDataset(tmp_path / "d")
    assert ds.features["observation.state"].names == ("x", "y", "z")
    out = tmp_path / "train"
    assert main(["train", "flow", "--data", str(tmp_path / "d"), "--out", str(out),
                 "--steps", "2", "--batch-size", "4", "--no-progress",
                 "-o", 'policy.params.input_features={"observation.state": {"shape": [3]}}',
                 ]) == 0  # fmt: skip
    policy = build_policy(out / "checkpoints" / "last")
    assert policy.params.action_names == ("left", "right")
    with pytest.raises(DatasetError, match="one name per entry"):
        Feature((2,), "float32", ("only",))
    with pytest.raises(ValueError, match="expected 3 names"):
        FeatureSpec(shape=(3,), names=("a", "b"))
    with pytest.raises(ValueError, match="action_names: expected distinct"):
        PolicyParams(input_features={"o": FeatureSpec(shape=(1,))}, action_dim=2,
                     action_names=("a", "a"))  # fmt: skip


def test_limits_from_stats_worked_numbers() -> None:
    low, high, which = limits_from_stats({"min": [-2.0, 0.0], "max": [2.0, 1.0]}, 0.1)  # type: ignore[misc]
    assert which == "min/max"
    np.testing.assert_allclose(low, [-2.4, -0.1])
    np.testing.assert_allclose(high, [2.4, 1.1])
    low, high, which = limits_from_stats({"q01": [1.0], "q99": [3.0], "mean": [2.0]}, 0.0)  # type: ignore[misc]
    assert which == "q01/q99" and low.tolist() == [1.0] and high.tolist() == [3.0]
    assert limits_from_stats({"mean": [0.0], "std": [1.0]}) is None
    np.testing.assert_allclose(auto_max_delta(np.array([-2.4, 0.0]), np.array([2.4, 1.0])),
                               [0.48, 0.1])  # fmt: skip
    assert auto_max_delta(np.array([1.0]), np.array([1.0])) is None  # a constant dim


def _sim(clock: VirtualClock, steps: int = 12) -> SimulatedRobot:
    env = gym.make(TASK, max_episode_steps=steps)
    return SimulatedRobot(env, 20, clock=clock, seed=3)


def test_recorder_splits_at_the_robots_episode_ends(tmp_path: Path) -> None:
    policy = build_policy("pendulum_expert")
    clock = VirtualClock()
    robot = _sim(clock)
    obs = {"observation.state": Feature((3,), "float32")}
    rec = DatasetRecorder(tmp_path / "rec", obs, Feature((1,), "float32"), 20, task="swing")
    ctrl = RealtimeController(policy, robot, hz=20, executor="sync", clock=clock, on_step=rec,
                              limits=None)  # fmt: skip
    tel = ctrl.run(max_steps=30)
    assert tel.ok and tel.steps == 30 and robot.episodes == 2
    assert rec.close() == tmp_path / "rec"
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 3 and ds.num_frames == 30
    assert [len(ds.episode(i)["action"]) for i in range(3)] == [12, 12, 6]
    for i in range(3):
        ep = ds.episode(i)
        assert ep["next.done"].tolist() == [False] * (len(ep["next.done"]) - 1) + [True]
        assert np.isnan(ep["next.reward"]).all()
    actions = np.concatenate([ds.episode(i)["action"] for i in range(3)])
    np.testing.assert_array_equal(actions, ctrl.executed.reshape(-1, 1))
    np.testing.assert_array_equal(actions, np.array(robot.executed).reshape(-1, 1))
    ep0 = ds.episode(0)
    # scalar columns read back as LeRobot declares them, shape (1,)
    np.testing.assert_allclose(ep0["envactor.time_s"][:, 0], np.arange(12) / 20)  # virtual clock
    sources = np.concatenate([np.concatenate([ds.episode(i)["envactor.chunk"],
                                              ds.episode(i)["envactor.chunk_index"]], 1)
                              for i in range(3)])  # fmt: skip
    np.testing.assert_array_equal(sources, np.array(ctrl.sources))


def test_a_failing_recording_is_a_safe_stop(tmp_path: Path) -> None:
    policy = build_policy("pendulum_expert")
    clock = VirtualClock()
    obs = {
        "observation.state": Feature((3,), "float32"),
        "observation.wrist": Feature((2,), "float32"),
    }
    rec = DatasetRecorder(tmp_path / "rec", obs, Feature((1,), "float32"), 20)
    ctrl = RealtimeController(policy, _sim(clock, 100), hz=20, executor="sync", clock=clock,
                              on_step=rec, limits=None)  # fmt: skip
    tel = ctrl.run(max_steps=50)
    assert tel.stop_reason == "step_hook_error" and "observation.wrist" in str(tel.error)
    assert tel.steps < 50 and not tel.ok  # stopped a few steps after the writer failed
    with pytest.raises(RecordingError, match="stopped after 0 frames"):
        rec.close()
    assert not (tmp_path / "rec").exists()  # no frame was valid: nothing is published


def test_dry_run_never_writes_a_simulated_robot() -> None:
    policy = build_policy("pendulum_expert")
    clock = VirtualClock()
    sim = _sim(clock)
    robot = DryRun(sim)
    ctrl = RealtimeController(policy, robot, hz=20, executor="sync", clock=clock, limits=None)
    tel = ctrl.run(max_steps=20)
    assert tel.ok and robot.would_be == 20 and sim.executed == []
    assert robot.episodes == 0  # the rest is the robot's own


def test_cli_records_and_logs_a_simulated_run(tmp_path: Path) -> None:
    root, log, report = tmp_path / "rec", tmp_path / "log", tmp_path / "run.json"
    args = ["run", TASK, "--ckpt", "pendulum_expert", "--hz", "20", "--seconds", "1.5",
            "--sim-clock", "controller", "--max-episode-steps", "10", "--no-progress",
            "--no-limits"]  # fmt: skip
    assert main([*args, "--record", str(root), "--log", str(log), "--json", str(report)]) == 0
    tel = json.loads(report.read_text())
    ds = LeRobotDataset(root)
    assert ds.num_frames == tel["steps"] == 30 and ds.num_episodes == 3
    rows = (log / "steps.csv").read_text().splitlines()
    assert rows[0].startswith("episode,step,time_s,chunk,chunk_index,weight_version,safe_stop")
    assert len(rows) == 31
    written = np.array([float(r.split(",")[8]) for r in rows[1:]], np.float32)
    np.testing.assert_array_equal(written, np.concatenate(
        [ds.episode(i)["action"][:, 0] for i in range(3)]))  # fmt: skip
    assert main([*args, "--record", str(root)]) == 2  # exists: refused, nothing replaced
    assert LeRobotDataset(root).num_frames == 30


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dry-run", "--record", "r"], "--record with --dry-run"),
        (["--record", "r", "--hz", "12.5"], "--record needs an integer --hz"),
        (["--robot", "so101_follower"], "give one of TASK"),
        (["--robot-opt", "port=x"], "--robot-opt configures a --robot"),
    ],
)
def test_cli_refuses_flag_combinations(extra: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["run", TASK, "--ckpt", "pendulum_expert", *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_robot_without_lerobot_says_how_to_install(capsys) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("envactor")
    try:
        import lerobot  # noqa: F401

        pytest.skip("LeRobot is installed here")
    except ImportError:
        pass
    assert main(["run", "--robot", "so101_follower", "--ckpt", "pendulum_expert"]) == 2
    err = capsys.readouterr().err
    assert "--robot needs LeRobot" in err and "pip install" in err


def test_a_recording_starts_dagger(tmp_path: Path) -> None:
    """``envactor run --record`` of the expert on the task, then DAgger from that recording
    (``--init-data``): behaviour cloning on it, and its episodes start the aggregate."""
    from envactor.data import open_dataset
    from envactor.distributed.dagger import OnlineSettings, train_online

    root = tmp_path / "rec"
    assert main(["run", TASK, "--ckpt", "pendulum_expert", "--hz", "20", "--seconds", "6",
                 "--sim-clock", "controller", "--max-episode-steps", "40", "--no-progress",
                 "--no-limits", "--record", str(root)]) == 0  # fmt: skip
    assert open_dataset(root).num_episodes == 3
    with pytest.raises(ValueError, match="needs the features"):
        OnlineSettings(init_data=root, task="envactor/ReacherReach-v0").check()  # its state
    out = tmp_path / "online"
    rows = train_online(
        OnlineSettings.quick(out=out, workers=0, iterations=1, init_data=root, init_steps=20,
                             train_steps=20, episodes_per_iter=2, eval_episodes=2),
        progress=False,
    )  # fmt: skip
    assert [r["version"] for r in rows] == [0, 1]
    assert not (out / "data" / "demos").exists()  # no expert demos were collected
    agg = open_dataset(out / "data" / "agg_0001")
    assert agg.num_episodes == 3 + 2  # the recording's, then one iteration's collection
    np.testing.assert_array_equal(agg.episode(0)["action"], open_dataset(root).episode(0)["action"])
