"""Datasets (LeRobot v3.0 as written by DatasetWriter): round trip, atomic writes, corrupt files,
chunk windows, stats."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from envactor.data import (
    ChunkWindows,
    DatasetError,
    DatasetWriter,
    EpisodeDataset,
    Feature,
    dataset_stats,
)

FEATURES: dict[str, Any] = {
    "observation.state": {"shape": [3], "dtype": "float32"},
    "observation.mask": Feature((2, 2, 3), "uint8"),  # uint8, not a camera: stored exactly
    "action": {"shape": [2], "dtype": "float32"},
}


def episode(t: int, seed: int, reward: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ep: dict[str, np.ndarray] = {
        "observation.state": rng.normal(size=(t, 3)).astype(np.float32),
        "observation.mask": rng.integers(0, 256, size=(t, 2, 2, 3), dtype=np.uint8),
        "action": rng.normal(size=(t, 2)).astype(np.float32),
    }
    if reward:
        ep["next.reward"] = np.arange(t, dtype=np.float32)
    return ep


def write(root: Path, lengths: tuple[int, ...] = (3, 5), **kw: Any) -> list[dict[str, np.ndarray]]:
    eps = [episode(n, seed=i, reward=i == 1) for i, n in enumerate(lengths)]
    with DatasetWriter(root, FEATURES, fps=10, task="reach", **kw) as w:
        for ep in eps:
            w.add_episode(ep)
    return eps


def test_round_trip_values_and_metadata(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    eps = write(root)
    ds = EpisodeDataset(root)
    assert ds.num_episodes == 2 and ds.num_frames == 8 and ds.fps == 10.0 and ds.task == "reach"
    assert ds.episode_lengths.tolist() == [3, 5] and ds.episode_starts.tolist() == [0, 3]
    assert ds.data_keys == [
        "observation.state",
        "observation.mask",
        "action",
        "next.reward",
        "next.done",
    ]
    assert ds.features["observation.mask"] == Feature((2, 2, 3), "uint8")
    for i, ep in enumerate(eps):
        got = ds.episode(i)
        for key, value in ep.items():
            assert got[key].dtype == value.dtype
            np.testing.assert_array_equal(got[key], value)
    e1 = ds.episode(1)
    assert e1["next.done"].tolist() == [False, False, False, False, True]
    assert e1["index"].tolist() == [3, 4, 5, 6, 7]
    np.testing.assert_allclose(e1["timestamp"], [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-7)
    assert np.isnan(ds.episode(0)["next.reward"]).all()  # not recorded
    assert list(ds.episode(0, ["action"])) == ["action"]
    info = json.loads((root / "meta/info.json").read_text())
    assert info["total_frames"] == 8 and info["codebase_version"] == "v3.0"
    assert info["features"]["observation.mask"] == {
        "dtype": "uint8",
        "shape": [2, 2, 3],
        "names": None,
    }
    assert [p.name for p in (root / "data/chunk-000").iterdir()] == ["file-000.parquet"]
    import pyarrow.parquet as pq

    schema = pq.read_schema(root / "data/chunk-000/file-000.parquet")
    inner = "fixed_size_list<element: fixed_size_list<element: uint8>[3]>[2]"
    assert str(schema.field("observation.mask").type) == f"fixed_size_list<element: {inner}>[2]"


def test_writer_is_atomic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"), DatasetWriter(root, FEATURES, fps=10) as w:
        w.add_episode(episode(4, 0))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor a temp dir is left
    write(root)
    with pytest.raises(DatasetError, match=r"already exists \(use --overwrite"):
        DatasetWriter(root, FEATURES, fps=10)
    write(root, lengths=(6,), overwrite=True)
    assert EpisodeDataset(root).episode_lengths.tolist() == [6]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_writer_rejects_bad_episodes(tmp_path: Path) -> None:
    w = DatasetWriter(tmp_path / "ds", FEATURES, fps=10)
    ep = episode(4, 0)
    with pytest.raises(DatasetError, match=r"'action' expected shape \(T, 2\), got \(4, 3\)"):
        w.add_episode({**ep, "action": np.zeros((4, 3))})
    with pytest.raises(DatasetError, match=r"missing \['observation.mask'\]"):
        w.add_episode({k: v for k, v in ep.items() if k != "observation.mask"})
    with pytest.raises(DatasetError, match=r"unknown \['extra'\]"):
        w.add_episode({**ep, "extra": np.zeros(4)})
    with pytest.raises(DatasetError, match="same number T > 0 of frames"):
        w.add_episode({**ep, "action": np.zeros((5, 2))})
    with pytest.raises(DatasetError, match="expected dtype uint8, got float64"):
        w.add_episode({**ep, "observation.mask": np.zeros((4, 2, 2, 3))})
    with pytest.raises(DatasetError, match="must include 'action'"):
        DatasetWriter(tmp_path / "x", {"observation.state": FEATURES["observation.state"]}, fps=5)
    w.abort()


@pytest.fixture()
def dataset_root(tmp_path: Path) -> Path:
    """Two episodes, each in a data file of its own (a tiny file size limit)."""
    root = tmp_path / "ds"
    write(root, data_file_mb=1e-9)
    return root


def test_truncated_parquet_names_the_file(dataset_root: Path) -> None:
    path = dataset_root / "data/chunk-000/file-001.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = EpisodeDataset(dataset_root)  # metadata is fine; the file is read on demand
    ds.episode(0)
    with pytest.raises(DatasetError, match=r"file-001\.parquet: not a readable Parquet"):
        ds.episode(1)
    with pytest.raises(DatasetError, match="file-001"):
        ds.validate()


def test_flipped_data_byte_is_caught_by_page_checksum(dataset_root: Path) -> None:
    import pyarrow.parquet as pq

    path = dataset_root / "data/chunk-000/file-000.parquet"
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)  # observation.state
    last = (
        (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size - 1
    )
    data = bytearray(path.read_bytes())
    data[last] ^= 0xFF  # a value byte of the page; headers and footer stay intact
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"file-000\.parquet: not a readable .*CRC checksum"):
        EpisodeDataset(dataset_root).episode(0)


def edit_info(root: Path, fn: Any) -> None:
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    fn(info)
    path.write_text(json.dumps(info))


def test_declared_feature_missing_from_the_data(dataset_root: Path) -> None:
    spec = {"dtype": "float32", "shape": [2], "names": None}
    edit_info(dataset_root, lambda i: i["features"].update({"observation.extra": spec}))
    ds = EpisodeDataset(dataset_root)
    ds.episode(0, ["action"])
    with pytest.raises(DatasetError) as exc:
        ds.episode(0)
    msg = str(exc.value)
    assert "file-000.parquet: no column 'observation.extra'" in msg
    assert "meta/info.json" in msg


def test_column_of_the_wrong_shape(dataset_root: Path) -> None:
    edit_info(dataset_root, lambda i: i["features"]["observation.state"].update(shape=[4]))
    with pytest.raises(DatasetError) as exc:
        EpisodeDataset(dataset_root).episode(1)
    msg = str(exc.value)
    assert "file-001.parquet: column 'observation.state' holds 15 values for 5 rows" in msg
    assert "expected shape [4] per row" in msg


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda i: i.pop("fps"), r"info\.json: missing key 'fps'"),
        (lambda i: i.update(fps=True), r"info\.json: fps: expected a positive number"),
        (lambda i: i.update(total_frames=9), r"total_frames=9, but the episodes hold 8 frames"),
        (lambda i: i.update(codebase_version="envactor-v1"), "expected one of"),
        (lambda i: i["features"]["action"].update(shape=[0]), r"features\['action'\]: shape"),
    ],
)
def test_broken_info_json(dataset_root: Path, edit: Any, match: str) -> None:
    edit_info(dataset_root, edit)
    with pytest.raises(DatasetError, match=match):
        EpisodeDataset(dataset_root)


def test_missing_or_unparsable_metadata(dataset_root: Path) -> None:
    (dataset_root / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"meta/info\.json: cannot read JSON"):
        EpisodeDataset(dataset_root)
    (dataset_root / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match=r"meta/info\.json: missing"):
        EpisodeDataset(dataset_root)


def test_episode_metadata_must_match_the_rows(dataset_root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = dataset_root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    lengths = pa.array([4, 4], pa.int64())
    pq.write_table(
        table.set_column(table.schema.get_field_index("length"), "length", lengths), path
    )
    with pytest.raises(DatasetError, match=r"episode 0: expected frames \[0, 4\), found "):
        EpisodeDataset(dataset_root)
    to = pa.array([4, 8], pa.int64())
    table = pq.read_table(path)
    i = table.schema.get_field_index("dataset_to_index")
    table = table.set_column(i, "dataset_to_index", to)
    i = table.schema.get_field_index("dataset_from_index")
    pq.write_table(table.set_column(i, "dataset_from_index", pa.array([0, 4], pa.int64())), path)
    with pytest.raises(DatasetError, match=r"file-000\.parquet: episode 0 should have 4 rows"):
        EpisodeDataset(dataset_root).episode(0)


def windows_root(tmp_path: Path) -> Path:
    """Two episodes (lengths 3 and 5); action = 10 * episode + frame, state = [frame, -frame]."""
    root = tmp_path / "w"
    feats = {
        "observation.state": {"shape": [2], "dtype": "float32"},
        "action": {"shape": [1], "dtype": "float32"},
    }
    with DatasetWriter(root, feats, fps=5) as w:
        for e, n in enumerate((3, 5)):
            t = np.arange(n, dtype=np.float32)
            w.add_episode(
                {"observation.state": np.stack([t, -t], 1), "action": (10 * e + t)[:, None]}
            )
    return root


def test_chunk_windows_pad_at_episode_ends(tmp_path: Path) -> None:
    win = ChunkWindows(windows_root(tmp_path), horizon=4)
    assert len(win) == 8 and win.obs_keys == ["observation.state"]
    expected = {  # sample -> (episode, frame, actions, pad)
        0: (0, 0, [0, 1, 2, 2], [0, 0, 0, 1]),
        1: (0, 1, [1, 2, 2, 2], [0, 0, 1, 1]),
        2: (0, 2, [2, 2, 2, 2], [0, 1, 1, 1]),
        3: (1, 0, [10, 11, 12, 13], [0, 0, 0, 0]),
        4: (1, 1, [11, 12, 13, 14], [0, 0, 0, 0]),
        5: (1, 2, [12, 13, 14, 14], [0, 0, 0, 1]),
        7: (1, 4, [14, 14, 14, 14], [0, 1, 1, 1]),
    }
    for i, (e, t, acts, pad) in expected.items():
        s = win[i]
        assert win.locate(i) == (e, t)
        assert s["action"].shape == (4, 1)
        assert s["action"][:, 0].tolist() == acts
        assert s["action_is_pad"].tolist() == [bool(p) for p in pad]
        assert s["observation.state"].tolist() == [t, -t]
    b = win.batch([2, 7, 3])
    assert b["action"].shape == (3, 4, 1) and b["action_is_pad"].dtype == np.bool_
    assert b["action"][:, :, 0].tolist() == [[2, 2, 2, 2], [14, 14, 14, 14], [10, 11, 12, 13]]
    assert b["observation.state"][:, 0].tolist() == [2, 4, 0]
    with pytest.raises(IndexError, match=r"in \[0, 8\)"):
        win.batch([8])


def test_chunk_windows_sample_is_seeded(tmp_path: Path) -> None:
    win = ChunkWindows(windows_root(tmp_path), horizon=2)
    a = win.sample(np.random.default_rng(3), 16)
    b = win.sample(np.random.default_rng(3), 16)
    c = win.sample(np.random.default_rng(4), 16)
    np.testing.assert_array_equal(a["action"], b["action"])
    assert not np.array_equal(a["action"], c["action"])
    with pytest.raises(DatasetError, match="not among features"):
        ChunkWindows(windows_root(tmp_path / "x"), 2, obs_keys=["observation.nope"])


def test_stats_equal_numpy_over_all_frames(dataset_root: Path) -> None:
    ds = EpisodeDataset(dataset_root)
    modes = {"observation.state": "mean_std", "action": "min_max", "observation.mask": "image"}
    norm = dataset_stats(ds, modes)
    state = np.concatenate([ds.episode(i)["observation.state"] for i in range(2)]).astype(
        np.float64
    )
    action = np.concatenate([ds.episode(i)["action"] for i in range(2)]).astype(np.float64)
    assert state.shape == (8, 3)
    s = norm.stats["observation.state"]
    np.testing.assert_allclose(s["mean"], state.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s["std"], state.std(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s["min"], state.min(0), rtol=0, atol=0)
    a = norm.stats["action"]
    np.testing.assert_allclose(a["min"], action.min(0), rtol=0, atol=0)
    np.testing.assert_allclose(a["max"], action.max(0), rtol=0, atol=0)
    assert norm.modes["observation.mask"] == "image" and norm.stats["observation.mask"] == {}
    with pytest.raises(DatasetError, match=r"no column for normalized keys \['observation.nope'\]"):
        dataset_stats(ds, {"observation.nope": "mean_std"})


@pytest.mark.parametrize(
    ("key", "value", "found"),
    [
        ("observation.state", np.nan, "nan"),
        ("action", np.inf, "inf"),
        ("action", -1e39, "-1e+39"),  # a float64 value the float32 column would turn into -inf
        ("next.reward", np.inf, "inf"),
    ],
)
def test_writer_refuses_values_a_float32_cannot_hold(
    tmp_path: Path, key: str, value: float, found: str
) -> None:
    ep: dict[str, np.ndarray] = {**episode(6, 0), "next.reward": np.zeros(6)}
    ep = {k: v.astype(np.float64) if k in ("action", "next.reward") else v for k, v in ep.items()}
    column = ep[key].copy()
    column.reshape(6, -1)[4, -1] = value
    dim = "" if key == "next.reward" else f" dim {column.reshape(6, -1).shape[1] - 1}"
    with DatasetWriter(tmp_path / "ds", FEATURES, fps=10) as w:
        w.add_episode(episode(2, 1))
        with pytest.raises(
            DatasetError,
            match=rf"ds: episode 1, frame 4: key '{key}'{dim}: expected a finite value within "
            rf"float32 range \(\|x\| <= 3.4028235e\+38\), found {re.escape(found)}$",
        ):
            w.add_episode({**ep, key: column})
        assert w.num_frames == 2  # nothing of the refused episode was kept
    assert EpisodeDataset(tmp_path / "ds").num_frames == 2


def test_writer_float16_overflow_and_nan_reward(tmp_path: Path) -> None:
    feats = {"action": {"shape": [2], "dtype": "float16"}}
    w = DatasetWriter(tmp_path / "ds", feats, fps=10)
    with pytest.raises(DatasetError, match=r"frame 1: key 'action' dim 0: expected \|x\| <= 65504"):
        w.add_episode({"action": np.array([[1.0, 2.0], [7e4, 0.0]], dtype=np.float32)})
    # NaN is how an unrecorded reward is stored, so an explicit NaN reward is accepted
    w.add_episode({"action": np.ones((2, 2)), "next.reward": np.array([np.nan, 1.0])})
    w.close()
    assert np.isnan(EpisodeDataset(tmp_path / "ds").episode(0)["next.reward"][0])


def replace_value(path: Path, key: str, frame: int, value: float) -> None:
    """Rewrite one Parquet file with ``value`` in the last element of ``key`` at ``frame``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    col = table.column(key).combine_chunks()
    values = col.flatten().to_numpy(zero_copy_only=False).copy()
    width = len(values) // len(col)
    values[frame * width + width - 1] = value
    new = pa.FixedSizeListArray.from_arrays(pa.array(values), width)
    table = table.set_column(table.schema.get_field_index(key), key, new)
    pq.write_table(table, path, write_page_checksum=True)


def test_reading_and_stats_refuse_non_finite_values_naming_file_episode_frame(
    dataset_root: Path,
) -> None:
    path = dataset_root / "data/chunk-000/file-001.parquet"
    replace_value(path, "observation.state", 3, np.inf)
    ds = EpisodeDataset(dataset_root)
    where = (
        r"file-001\.parquet \(episode 1\), frame 3: key 'observation\.state' dim 2: "
        r"expected a finite value within float32 range .* found inf"
    )
    with pytest.raises(DatasetError, match=where):
        ds.episode(1)
    ds.episode(1, ["action"])  # the other columns still read
    with pytest.raises(DatasetError, match=where):
        dataset_stats(ds, {"observation.state": "mean_std"})
    with pytest.raises(DatasetError, match=where):
        ChunkWindows(ds, horizon=2)
    with pytest.raises(DatasetError, match=where):
        ds.validate()


def test_stats_of_the_issue_outlier_dataset(tmp_path: Path) -> None:
    """4800 frames in 48 episodes, one finite 3e38: quantiles stay in the data's range."""
    rng = np.random.default_rng(5)
    feats = {"observation.state": FEATURES["observation.state"], "action": FEATURES["action"]}
    states = rng.normal(size=(4800, 3)).astype(np.float32)
    states[1234, 1] = 3e38
    with DatasetWriter(tmp_path / "ds", feats, fps=10) as w:
        for e in range(48):
            part = states[e * 100 : (e + 1) * 100]
            w.add_episode({"observation.state": part, "action": np.zeros((100, 2))})
    ds = EpisodeDataset(tmp_path / "ds")
    wide = states.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quantile mode is not hurt by the outlier: no warning
        norm = dataset_stats(ds, {"observation.state": "quantile", "action": "mean_std"})
    s = norm.stats["observation.state"]
    for name, q in (("q01", 0.01), ("q99", 0.99)):
        assert np.all(wide.min(0) <= s[name]) and np.all(s[name] <= wide.max(0))
        np.testing.assert_allclose(s[name], np.quantile(wide, q, axis=0), rtol=1e-12)
    np.testing.assert_allclose(s["std"], wide.std(0), rtol=1e-12)
    assert np.isfinite(s["mean"]).all() and np.isfinite(s["std"]).all()
    # mean_std would flatten dim 1 of every frame: a warning names the outlier and its frame
    with pytest.warns(
        RuntimeWarning,
        match=r"key 'observation.state' dim 1: .* 3e\+38 at \S+ "
        r"\(episode 12\), frame 34; .* use mode 'quantile'",
    ):
        dataset_stats(ds, {"observation.state": "mean_std"})
