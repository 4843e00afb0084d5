"""``envactor train POLICY --data <LeRobot dataset>``: inputs, cameras and stats from the dataset.

The dataset is the LeRobot v3.0 fixture (two AV1 cameras, top 48x64 and wrist 32x32; state 4,
action 4; 73 frames): training reads its frames, and the checkpoint acts on uint8 HWC images.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from envactor.cli import main
from envactor.data import DatasetError, LeRobotDataset
from envactor.data.stats import COMPUTED, NOT_NEEDED, STORED, dataset_stats, training_stats
from envactor.nn import MLP, ObservationEncoder
from envactor.policy import Policy, build_policy
from envactor.policy.boundary import ObservationError
from envactor.policy.build import packaged_config
from envactor.runtime.serving.client import PolicyClient
from envactor.runtime.serving.server import PolicyServer

DATASET = Path(__file__).parent / "fixtures" / "lerobot" / "dataset"
S, TOP, WRIST = "observation.state", "observation.images.top", "observation.images.wrist"
SHAPES = {S: (4,), TOP: (48, 64, 3), WRIST: (32, 32, 3)}
CAMERA = [
    "-o", "model.components.encoder.hidden_dims=[32]",
    "-o", "model.components.encoder.out_dim=32",
    "-o", "model.components.encoder.camera_dim=8",
    "-o", "model.components.encoder.camera_channels=[4,8]",
]  # fmt: skip
SMALL = {
    "flow": [*CAMERA, "-o", "model.components.velocity.hidden_dims=[32]",
             "-o", "model.components.velocity.time_dim=16"],
    "act": [*CAMERA, "-o", "model.components.decoder.d_model=16",
            "-o", "model.components.decoder.nhead=2", "-o", "model.components.decoder.num_layers=1",
            "-o", "model.components.decoder.dim_feedforward=32",
            "-o", "model.components.decoder.num_cond_tokens=2"],
}  # fmt: skip


def train_argv(name: str, out: Path, *extra: str) -> list[str]:
    return ["train", name, "--data", str(DATASET), "--out", str(out), "--steps", "4",
            "--batch-size", "8", "--log-every", "2", "--warmup-steps", "1", "--no-progress",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """flow and act trained from the command line on the fixture: run dir and what it printed."""
    root = tmp_path_factory.mktemp("train_lerobot")
    out: dict[str, tuple[Path, str]] = {}
    for name in ("flow", "act"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(train_argv(name, root / name, *SMALL[name]))
        assert code == 0, buf.getvalue()
        out[name] = (root / name, buf.getvalue())
    return out


def images(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs: dict[str, np.ndarray] = {S: rng.normal(size=(batch, 4)).astype(np.float32)}
    for key in (TOP, WRIST):
        obs[key] = rng.integers(0, 256, (batch, *SHAPES[key]), dtype=np.uint8)
    return obs


@pytest.mark.parametrize("name", ["flow", "act"])
def test_cli_trains_on_the_fixture_and_the_checkpoint_acts_on_images(
    runs: dict[str, tuple[Path, str]], name: str
) -> None:
    out, printed = runs[name]
    assert "trained to step 4" in printed
    assert (
        "normalizer: observation.state mean_std (meta/stats.json); observation.images.top image "
        "(no stats needed); observation.images.wrist image (no stats needed); action min_max "
        "(meta/stats.json)" in printed
    )
    first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert first["normalizer"]["observation.state"] == {"mode": "mean_std", "stats": STORED}
    assert first["normalizer"][TOP] == {"mode": "image", "stats": NOT_NEEDED}

    policy = build_policy(out / "checkpoints" / "last")
    # inputs and the action dimension came from the dataset's metadata
    assert {k: (s.shape, s.dtype, s.norm) for k, s in policy.input_features.items()} == {
        S: ((4,), "float32", "mean_std"),
        TOP: ((48, 64, 3), "uint8", "image"),
        WRIST: ((32, 32, 3), "uint8", "image"),
    }
    assert policy.action_shape == (8, 4)
    enc = policy.components["encoder"]
    assert isinstance(enc, ObservationEncoder) and enc.camera_keys == [TOP, WRIST]
    # the stats are the dataset's meta/stats.json
    stored = LeRobotDataset(DATASET).stats()
    assert policy.normalizer is not None
    got = policy.normalizer.stats
    np.testing.assert_array_equal(got[S]["mean"], stored[S]["mean"])
    np.testing.assert_array_equal(got[S]["std"], stored[S]["std"])
    np.testing.assert_array_equal(got["action"]["min"], stored["action"]["min"])
    np.testing.assert_array_equal(got["action"]["max"], stored["action"]["max"])

    policy.set_env_seeds({0: 0, 1: 1})
    chunk = policy.predict(images(2))
    assert chunk.shape == (2, 8, 4) and chunk.dtype == np.float32 and np.isfinite(chunk).all()
    frames = LeRobotDataset(DATASET).frames([0, 40, 72], [S, TOP, WRIST])
    assert np.isfinite(policy.predict(frames)).all()
    bad = {**images(2), WRIST: np.zeros((2, 48, 64, 3), np.uint8)}
    with pytest.raises(
        ObservationError,
        match=r"observation\['observation.images.wrist'\]: expected shape \(B, 32, 32, 3\), got "
        r"\(2, 48, 64, 3\)",
    ):
        policy.predict(bad)


def test_image_checkpoint_is_served(runs: dict[str, tuple[Path, str]]) -> None:
    policy = build_policy(runs["act"][0] / "checkpoints" / "last")
    obs = images(1, seed=3)
    want = policy.predict(obs)[0]
    server = PolicyServer(policy, port=0).start()
    try:
        with PolicyClient(port=server.port) as client:
            meta = client.metadata
            assert meta["input_features"][TOP] == {"shape": [48, 64, 3], "dtype": "uint8"}
            reply = client.infer({k: v[0] for k, v in obs.items()})
    finally:
        server.stop()
    np.testing.assert_allclose(reply["actions"], want, rtol=1e-5, atol=1e-6)


def test_overrides_choose_the_inputs_and_the_encoder_follows(tmp_path: Path) -> None:
    argv = train_argv(
        "flow", tmp_path / "state", "-o", "policy.params.input_features={observation.state: {}}"
    )
    assert main(argv) == 2  # an override replaces the whole mapping: shape is required
    state_only = "policy.params.input_features={observation.state: {shape: [4]}}"
    assert main(train_argv("flow", tmp_path / "state2", "-o", state_only)) == 0
    policy = build_policy(tmp_path / "state2" / "checkpoints" / "last")
    assert list(policy.input_features) == [S] and policy.action_shape == (8, 4)
    enc = policy.components["encoder"]
    assert isinstance(enc, MLP) and enc.in_dim == 4  # no hand-set in_dim


def test_features_the_config_gives_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a policy YAML gives its own features (the packaged flow: state [3], action 1)
    shutil.copytree(packaged_config("flow").parent, tmp_path / "cfg")
    code = main(train_argv(str(tmp_path / "cfg" / "policy.yaml"), tmp_path / "a"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert (
        f"{DATASET / 'meta' / 'info.json'}: 'observation.state' is shape [4] float32; policy "
        "'flow' expects shape [3] float32 (policy.params.input_features; " in err
    )
    # an override of a registered policy's action_dim is checked too
    code = main(train_argv("act", tmp_path / "b", "-o", "policy.params.action_dim=2"))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "'action' is shape [4]; policy 'act' expects [2] (policy.params.action_dim)" in err


def copy_dataset(tmp_path: Path, edit: dict[str, Any]) -> LeRobotDataset:
    root = tmp_path / "ds"
    shutil.copytree(DATASET, root)
    stats = json.loads((root / "meta" / "stats.json").read_text())
    for key, value in edit.items():
        if value is None:
            stats.pop(key)
        else:
            stats[key] = value
    (root / "meta" / "stats.json").write_text(json.dumps(stats))
    return LeRobotDataset(root)


def test_training_stats_take_stats_json_where_the_mode_has_them(tmp_path: Path) -> None:
    stored = LeRobotDataset(DATASET).stats()
    ds = copy_dataset(tmp_path, {S: None})  # no state stats stored
    modes: dict[str, Any] = {S: "quantile", "action": "quantile", TOP: "image"}
    norm, sources = training_stats(ds, modes)
    assert sources == {S: COMPUTED, "action": STORED, TOP: NOT_NEEDED}
    np.testing.assert_array_equal(norm.stats["action"]["q01"], stored["action"]["q01"])
    np.testing.assert_array_equal(norm.stats["action"]["q99"], stored["action"]["q99"])
    computed = dataset_stats(ds, {S: "quantile"}).stats[S]
    np.testing.assert_array_equal(norm.stats[S]["q01"], computed["q01"])
    # stats of the wrong size for the feature are not used
    ds2 = copy_dataset(tmp_path / "2", {"action": {"mean": [0.0], "std": [1.0]}})
    _, sources2 = training_stats(ds2, {"action": "mean_std"})
    assert sources2 == {"action": COMPUTED}


def test_a_dataset_without_cameras_keeps_the_state_path(tmp_path: Path) -> None:
    """A state-only LeRobot dataset gives the packaged policy unchanged (same config)."""
    from envactor.data import DatasetWriter
    from envactor.train.from_dataset import dataset_overrides

    rng = np.random.default_rng(0)
    feats = {S: {"shape": [3], "dtype": "float32"}, "action": {"shape": [1], "dtype": "float32"}}
    with DatasetWriter(tmp_path / "d", feats, fps=20, task="t") as w:
        for _ in range(2):
            w.add_episode({S: rng.normal(size=(10, 3)), "action": rng.normal(size=(10, 1))})
    extra = dataset_overrides("flow", [], LeRobotDataset(tmp_path / "d"))
    torch.manual_seed(0)
    a: Policy = build_policy("flow")
    torch.manual_seed(0)
    b: Policy = build_policy("flow", overrides=extra)
    assert a.config == b.config and isinstance(b.components["encoder"], MLP)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(DatasetError, match=r"no observation.\* features"):
        ds = LeRobotDataset(tmp_path / "d")
        dataset_overrides("flow", [], _without_observations(ds))


def _without_observations(ds: LeRobotDataset) -> LeRobotDataset:
    ds.features = {k: v for k, v in ds.features.items() if not k.startswith("observation.")}
    return ds
