"""LeRobot itself (0.4.4, in .venv-lerobot: `make test-lerobot`) against envactor's datasets.

Skipped where LeRobot is not installed (the main .venv).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lerobot.datasets")
pytest.importorskip("torchcodec")

from lerobot.datasets.lerobot_dataset import LeRobotDataset as LeRobotsDataset

from envactor.data.lerobot_dataset import LeRobotDataset
from envactor.data.lerobot_writer import LeRobotWriter

FIXTURE = Path(__file__).parent.parent / "fixtures" / "lerobot" / "dataset"
CAMERAS = ("observation.images.top", "observation.images.wrist")
FEATURES = {
    "observation.state": {"shape": [4], "dtype": "float32"},
    "action": {"shape": [4], "dtype": "float32"},
    **{
        k: {"shape": list(LeRobotDataset(FIXTURE).features[k].shape), "dtype": "video"}
        for k in CAMERAS
    },
}


def _theirs(root: Path) -> LeRobotsDataset:
    return LeRobotsDataset("envactor/test", root=root, video_backend="torchcodec")


def _compare(ours: LeRobotDataset, theirs: LeRobotsDataset, atol: float) -> None:
    assert len(theirs) == ours.num_frames
    assert theirs.num_episodes == ours.num_episodes
    for i in range(ours.num_frames):
        item, mine = theirs[i], ours[i]
        for key in ("observation.state", "action"):
            np.testing.assert_array_equal(item[key].numpy(), mine[key])
        for key in ("frame_index", "episode_index", "index", "task_index"):
            assert int(item[key]) == int(mine[key])
        assert item["task"] == ours.tasks[int(mine["task_index"])]
        for key in CAMERAS:
            got = item[key].numpy().transpose(1, 2, 0)
            np.testing.assert_allclose(got, mine[key] / 255.0, atol=atol, rtol=0)


def test_envactor_reads_lerobots_fixture_as_lerobot_does() -> None:
    # Same stream, two decoders (LeRobot's torchcodec here, envactor's PyAV): AV1 decoding is
    # bit-exact and both convert with FFmpeg's rgb24 path.
    _compare(LeRobotDataset(FIXTURE), _theirs(FIXTURE), atol=1e-6)


def test_lerobot_opens_and_iterates_a_dataset_envactor_wrote(tmp_path: Path) -> None:
    src = LeRobotDataset(FIXTURE)
    root = tmp_path / "written"
    with LeRobotWriter(root, FEATURES, 10, robot_type="synth_arm4") as w:
        for e in range(src.num_episodes):
            w.add_episode(src.episode(e, list(FEATURES)), task=src.episode_tasks(e)[0])
    ours, theirs = LeRobotDataset(root), _theirs(root)
    _compare(ours, theirs, atol=1e-6)
    assert theirs.meta.total_tasks == 2
    for key in ("observation.state", "action", *CAMERAS):
        for stat in ("mean", "std", "min", "max", "q01", "q99"):
            np.testing.assert_allclose(
                np.asarray(theirs.meta.stats[key][stat]), ours.stats()[key][stat], rtol=1e-6
            )


def test_lerobot_opens_what_envactor_collect_writes(tmp_path: Path) -> None:
    from envactor.runtime.collect import collect

    root = tmp_path / "pendulum"
    collect("envactor/PendulumSwingUp-v0", episodes=3, out=root, num_envs=2, progress=False)
    ours, theirs = LeRobotDataset(root), _theirs(root)
    assert len(theirs) == ours.num_frames == 3 * 200
    assert theirs.meta.fps == 20 and theirs.num_episodes == 3
    for i in (0, 199, 200, 599):
        item, mine = theirs[i], ours[i]
        for key in ("observation.state", "action", "next.reward", "next.done"):
            np.testing.assert_array_equal(item[key].numpy(), mine[key])
        assert item["task"] == "envactor/PendulumSwingUp-v0"
    assert bool(theirs[199]["next.done"]) and not bool(theirs[198]["next.done"])
