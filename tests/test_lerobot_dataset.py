"""Reading LeRobot datasets: the v3.0 fixture written by LeRobot 0.4.4, and a v2.1 copy of it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("av")

import pyarrow.parquet as pq  # noqa: E402

from envactor.data import DatasetError  # noqa: E402
from envactor.data.lerobot_dataset import LeRobotDataset  # noqa: E402
from envactor.data.lerobot_writer import LeRobotWriter  # noqa: E402
from envactor.data.video import VideoEncoder, VideoReader  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot"
DATASET = FIXTURES / "dataset"
CAMERAS = ("observation.images.top", "observation.images.wrist")


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference" / "dataset_frames.npz") as z:
        return {k: z[k] for k in z.files}


def test_fixture_files_are_the_ones_lerobot_wrote() -> None:
    manifest = json.loads((FIXTURES / "reference" / "manifest.json").read_text())
    for rel, entry in manifest["files"].items():
        if rel.endswith(".py"):
            continue  # the generating scripts are not copied into the repository
        data = (FIXTURES / rel).read_bytes()
        assert len(data) == entry["bytes"], rel
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel


def test_metadata_of_the_v3_fixture() -> None:
    ds = LeRobotDataset(DATASET)
    assert ds.meta.version == "v3.0"
    assert ds.num_episodes == 3 and ds.num_frames == 73 and ds.fps == 10
    assert ds.episode_lengths.tolist() == [24, 31, 18]
    assert ds.episode_starts.tolist() == [0, 24, 55]
    assert ds.tasks == ["push the block", "reach"]
    assert [ds.episode_tasks(i) for i in range(3)] == [
        ("push the block",),
        ("reach",),
        ("push the block",),
    ]
    assert ds.camera_keys == list(CAMERAS)
    assert ds.features["observation.images.top"].shape == (48, 64, 3)
    assert ds.features["observation.images.wrist"].shape == (32, 32, 3)
    assert ds.features["timestamp"].shape == ()  # declared [1], stored as a plain column
    stats = ds.stats()
    assert stats["action"]["mean"].shape == (4,)
    assert stats["observation.images.top"]["mean"].shape == (3, 1, 1)


def test_frames_equal_lerobots_decoded_frames_exactly(reference: dict[str, np.ndarray]) -> None:
    # The reference holds what LeRobot's own loader returned (PyAV backend): float CHW in
    # [0, 1] = uint8 / 255. Same decoder and the same rgb24 conversion: exact equality.
    ds = LeRobotDataset(DATASET)
    indices = [0, 5, 23, 24, 64]  # first, middle, last of ep 0, first of ep 1, middle of ep 2
    got = ds.frames(indices)
    for key in CAMERAS:
        want = np.rint(reference[key] * 255).astype(np.uint8).transpose(0, 2, 3, 1)
        assert got[key].dtype == np.uint8
        np.testing.assert_array_equal(got[key], want)
    for key in ("observation.state", "action", "timestamp", "frame_index", "episode_index"):
        np.testing.assert_array_equal(got[key], reference[key])
    np.testing.assert_array_equal(got["index"], indices)
    np.testing.assert_array_equal(got["task_index"], reference["task_index"])


def test_frames_in_any_order_and_whole_episodes_agree() -> None:
    ds = LeRobotDataset(DATASET)
    episode = ds.episode(1)
    assert episode["observation.images.top"].shape == (31, 48, 64, 3)
    np.testing.assert_array_equal(episode["index"], np.arange(24, 55))
    order = np.array([54, 24, 40, 24, 3])
    got = ds.frames(order, ["observation.images.wrist", "action"])
    assert set(got) == {"observation.images.wrist", "action"}
    for j, i in enumerate(order):
        e = int(np.searchsorted(ds.episode_starts, i, side="right") - 1)
        full = ds.episode(e, ["observation.images.wrist", "action"])
        t = i - ds.episode_starts[e]
        wrist = full["observation.images.wrist"][t]
        np.testing.assert_array_equal(got["observation.images.wrist"][j], wrist)
        np.testing.assert_array_equal(got["action"][j], full["action"][t])


def test_decoded_frames_are_close_to_what_was_written(reference: dict[str, np.ndarray]) -> None:
    # Lossy AV1 (crf 30) of tiny frames: only a mean tolerance makes sense here.
    got = LeRobotDataset(DATASET).frames([0, 5, 23, 24, 64])
    for key in CAMERAS:
        err = np.abs(got[key].astype(np.float64) - reference[f"written.{key}"]) / 255
        assert err.mean() < 0.03


def _as_v21(src: Path, dst: Path) -> None:
    """Rewrite the v3.0 fixture in the v2.1 layout (one data and one video file per episode)."""
    ds = LeRobotDataset(src)
    info = json.loads((src / "meta" / "info.json").read_text())
    info["codebase_version"] = "v2.1"
    info["data_path"] = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    info["video_path"] = (
        "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    )
    (dst / "meta").mkdir(parents=True)
    (dst / "meta" / "info.json").write_text(json.dumps(info))
    table = pq.read_table(src / "data" / "chunk-000" / "file-000.parquet")
    tasks = ds.tasks
    with open(dst / "meta" / "tasks.jsonl", "w") as f:
        for i, t in enumerate(tasks):
            f.write(json.dumps({"task_index": i, "task": t}) + "\n")
    episodes, ep_stats = [], []
    for e in range(ds.num_episodes):
        lo, n = int(ds.episode_starts[e]), int(ds.episode_lengths[e])
        rows = table.filter(
            pa.compute.and_(
                pa.compute.greater_equal(table.column("index"), lo),
                pa.compute.less(table.column("index"), lo + n),
            )
        )
        assert rows.num_rows == n
        out = dst / "data" / "chunk-000" / f"episode_{e:06d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, out)
        frames = ds.episode(e, list(CAMERAS))
        for key in CAMERAS:
            h, w, _ = frames[key].shape[1:]
            enc = VideoEncoder(
                dst / "videos" / "chunk-000" / key / f"episode_{e:06d}.mp4", 10, h, w
            )
            enc.add(frames[key])
            enc.close()
        episodes.append({"episode_index": e, "tasks": list(ds.episode_tasks(e)), "length": n})
        act = np.asarray(rows.column("action").to_pylist())
        ep_stats.append(
            {
                "episode_index": e,
                "stats": {
                    "action": {
                        "mean": act.mean(0).tolist(),
                        "std": act.std(0).tolist(),
                        "min": act.min(0).tolist(),
                        "max": act.max(0).tolist(),
                        "count": [n],
                    }
                },
            }
        )
    for name, items in (("episodes.jsonl", episodes), ("episodes_stats.jsonl", ep_stats)):
        with open(dst / "meta" / name, "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in items)


def test_v21_layout_reads_the_same_data(tmp_path: Path) -> None:
    v3 = LeRobotDataset(DATASET)
    _as_v21(DATASET, tmp_path / "v21")
    v2 = LeRobotDataset(tmp_path / "v21")
    assert v2.meta.version == "v2.1"
    assert v2.episode_lengths.tolist() == v3.episode_lengths.tolist()
    assert v2.tasks == v3.tasks
    for e in range(3):
        a, b = v3.episode(e), v2.episode(e)
        for key in ("observation.state", "action", "timestamp", "index", "task_index"):
            np.testing.assert_array_equal(a[key], b[key])
        for key in CAMERAS:  # re-encoded as H.264 crf 18: close, not equal
            diff = np.abs(a[key].astype(int) - b[key].astype(int))
            assert diff.mean() < 3, (key, diff.mean())
    # stats aggregated from episodes_stats.jsonl equal the pooled stats of all frames
    actions = np.concatenate([v3.episode(e, ["action"])["action"] for e in range(3)])
    stats = v2.stats()["action"]
    np.testing.assert_allclose(stats["mean"], actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], actions.std(0), rtol=1e-5)
    np.testing.assert_allclose(stats["min"], actions.min(0))


def test_video_encoder_round_trip_is_frame_exact_in_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (12, 1, 1, 3), dtype=np.uint8), 16, 1).repeat(16, 2)
    enc = VideoEncoder(tmp_path / "v.mp4", fps=30, height=16, width=16)
    enc.add(frames[:5])
    enc.add(frames[5:])
    enc.close()
    assert enc.num_frames == 12
    reader = VideoReader(tmp_path / "v.mp4")
    got = reader.frames([k / 30 for k in (11, 0, 7)])
    # flat-colour frames survive yuv420p + crf 18 within a few levels
    for j, k in enumerate((11, 0, 7)):
        assert np.abs(got[j].astype(int) - frames[k].astype(int)).max() <= 6
    with pytest.raises(DatasetError, match="no frame within"):
        reader.frames([0.5 / 30])  # between two frames
    with pytest.raises(DatasetError, match="even frame size"):
        VideoEncoder(tmp_path / "odd.mp4", fps=30, height=15, width=16)


def test_broken_datasets_are_named(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(DATASET, root)
    video = root / "videos" / CAMERAS[0] / "chunk-000" / "file-000.mp4"
    video.write_bytes(video.read_bytes()[:2000])  # truncated
    ds = LeRobotDataset(root)
    np.testing.assert_array_equal(ds.episode(0, ["action"])["action"].shape, (24, 4))
    with pytest.raises(DatasetError, match=r"file-000\.mp4"):
        ds.episode(2, [CAMERAS[0]])
    video.unlink()
    with pytest.raises(DatasetError, match="video file missing"):
        LeRobotDataset(root).episode(0, [CAMERAS[0]])
    info = json.loads((root / "meta" / "info.json").read_text())
    info["codebase_version"] = "v1.6"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="codebase_version"):
        LeRobotDataset(root)


# ---------------------------------------------------------------- writing v3.0
FEATURES = {
    "observation.state": {"shape": [4], "dtype": "float32"},
    "action": {"shape": [4], "dtype": "float32"},
    "observation.images.top": {"shape": [48, 64, 3], "dtype": "video"},
    "observation.images.wrist": {"shape": [32, 32, 3], "dtype": "video"},
}


def _copy_fixture(root: Path, **kwargs: object) -> LeRobotDataset:
    src = LeRobotDataset(DATASET)
    with LeRobotWriter(root, FEATURES, 10, robot_type="synth_arm4", **kwargs) as w:
        for e in range(src.num_episodes):
            w.add_episode(src.episode(e, list(FEATURES)), task=src.episode_tasks(e)[0])
    return LeRobotDataset(root)


def test_written_v3_dataset_reads_back(tmp_path: Path) -> None:
    src = LeRobotDataset(DATASET)
    out = _copy_fixture(tmp_path / "out")
    assert out.meta.version == "v3.0"
    assert out.tasks == src.tasks
    assert out.episode_lengths.tolist() == [24, 31, 18]
    info = json.loads((tmp_path / "out" / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "h264"
    for e in range(3):
        a, b = src.episode(e), out.episode(e)
        for key in ("observation.state", "action", "timestamp", "index", "task_index"):
            np.testing.assert_array_equal(a[key], b[key])
        for key in CAMERAS:  # one more lossy generation (H.264 crf 18)
            assert np.abs(a[key].astype(int) - b[key].astype(int)).mean() < 3
    stats = out.stats()
    actions = np.concatenate([src.episode(e, ["action"])["action"] for e in range(3)])
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q50"], np.quantile(actions, 0.5, axis=0))
    # stats describe the frames as given to the writer (before lossy encoding)
    frames = np.concatenate([src.episode(e, [CAMERAS[0]])[CAMERAS[0]] for e in range(3)])
    np.testing.assert_allclose(
        stats[CAMERAS[0]]["mean"].ravel(), frames.reshape(-1, 3).mean(0) / 255, rtol=1e-6
    )
    assert stats[CAMERAS[0]]["mean"].shape == (3, 1, 1)


def test_writer_rolls_files_and_refuses_bad_episodes(tmp_path: Path) -> None:
    out = _copy_fixture(tmp_path / "small", data_file_mb=1e-6, video_file_mb=1e-6)
    files = sorted(p.name for p in (tmp_path / "small" / "data" / "chunk-000").iterdir())
    assert files == ["file-000.parquet", "file-001.parquet", "file-002.parquet"]
    assert out.episode(2)["index"].tolist() == list(range(55, 73))
    with pytest.raises(DatasetError, match="already exists"):
        LeRobotWriter(tmp_path / "small", FEATURES, 10)
    w = LeRobotWriter(tmp_path / "bad", FEATURES, 10)
    ep = LeRobotDataset(DATASET).episode(0, list(FEATURES))
    with pytest.raises(DatasetError, match=r"'action' expected shape \(T, 4\)"):
        w.add_episode({**ep, "action": ep["action"][:, :3]})
    ep["observation.state"] = ep["observation.state"].copy()
    ep["observation.state"][3, 1] = np.nan
    with pytest.raises(DatasetError, match=r"frame 3: key .observation.state. dim 1"):
        w.add_episode(ep)
    w.abort()
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob(".bad.tmp-*"))
