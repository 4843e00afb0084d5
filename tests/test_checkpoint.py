"""Checkpoint directories: bit-exact round trip, checksums, strict loading, atomic saves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import envactor.checkpoint as ck
from envactor.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_components_strict,
    read_meta,
    save_checkpoint,
)
from envactor.normalize import Normalizer

CONFIG = {"policy": {"type": "mlp_chunk", "params": {"horizon": 8}}, "model": {"dims": [4, 4]}}


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.lowp = nn.Linear(4, 4).to(torch.bfloat16)
        self.register_buffer("scale", torch.ones(4))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.emb.weight


def make_modules(seed: int) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    enc = Encoder()
    enc.scale.uniform_(0, 2)  # type: ignore[operator]
    return {"encoder": enc, "tied": Tied()}


def normalizer() -> Normalizer:
    return Normalizer(
        {"observation.state": "mean_std", "action": "min_max", "observation.images.top": "image"},
        {
            "observation.state": {"mean": np.array([0.1, 0.2]), "std": np.array([1.5, 2.5])},
            "action": {"min": np.array([-1.0]), "max": np.array([3.0])},
        },
    )


def save(path: Path, seed: int = 0, step: int = 0) -> dict[str, nn.Module]:
    mods = make_modules(seed)
    save_checkpoint(
        path,
        config=CONFIG,
        components={**mods, "extra": {"w": torch.arange(6.0).reshape(2, 3).t()}},
        normalizer=normalizer(),
        step=step,
        weight_version=3,
        extra_meta={"run": "abc"},
    )
    return mods


def rewrite_meta_hash(path: Path, name: str) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["sha256"][name] = ck._sha256(path / name)
    (path / "meta.json").write_text(json.dumps(meta))


def test_round_trip_bit_exact(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    mods = save(path, seed=0, step=12)
    assert sorted(os.listdir(path)) == [
        "encoder.safetensors",
        "extra.safetensors",
        "meta.json",
        "normalizer.safetensors",
        "policy.yaml",
        "tied.safetensors",
    ]
    assert (path / "policy.yaml").read_text().startswith("policy:\n  type: mlp_chunk")
    ckpt = load_checkpoint(path)
    assert ckpt.config == CONFIG
    assert ckpt.meta["step"] == 12 and ckpt.meta["weight_version"] == 3
    assert ckpt.meta["components"] == ["encoder", "tied", "extra"]
    assert ckpt.meta["extra"] == {"run": "abc"}
    assert ckpt.meta["torch_version"] == torch.__version__
    assert set(ckpt.meta["sha256"]) == set(os.listdir(path)) - {"meta.json"}
    assert torch.equal(ckpt.component_state["extra"]["w"], torch.arange(6.0).reshape(2, 3).t())
    fresh = make_modules(seed=1)
    fresh.pop("tied")
    with pytest.raises(CheckpointError, match=r"only in checkpoint: \['extra', 'tied'\]"):
        load_components_strict(ckpt, fresh)
    fresh = make_modules(seed=1)
    ckpt.component_state.pop("extra")
    load_components_strict(ckpt, fresh)
    for name in ("encoder", "tied"):
        want = mods[name].state_dict()
        got = fresh[name].state_dict()
        assert want.keys() == got.keys()
        for k in want:
            assert want[k].dtype == got[k].dtype and torch.equal(want[k], got[k]), (name, k)
    assert fresh["encoder"].lowp.weight.dtype == torch.bfloat16  # type: ignore[union-attr]
    assert fresh["tied"].out.weight is fresh["tied"].emb.weight  # type: ignore[union-attr]
    norm = ckpt.normalizer
    assert norm is not None and norm.modes == normalizer().modes
    for k, v in normalizer().state_dict().items():
        assert torch.equal(norm.state_dict()[k], v)
    assert read_meta(path)["sha256"] == ckpt.meta["sha256"]


def test_flipped_byte_is_a_checksum_error(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save(path)
    target = path / "encoder.safetensors"
    want = read_meta(path)["sha256"]["encoder.safetensors"]
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x01
    target.write_bytes(bytes(data))
    found = ck._sha256(target)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "encoder.safetensors: sha256 mismatch" in msg
    assert f"expected {want}, found {found}" in msg
    load_checkpoint(path, verify=False)  # still parseable: the byte was in tensor data


def test_missing_and_unlisted_files(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save(path)
    (path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"files not listed in meta.json: \['notes.txt'\]"):
        load_checkpoint(path)
    (path / "notes.txt").unlink()
    (path / "normalizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"normalizer.safetensors: missing"):
        load_checkpoint(path)
    (path / "meta.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"ckpt: not a checkpoint, meta.json is missing; expected"
    ):
        read_meta(path)


def test_renamed_tensor_names_file_and_tensor(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save(path)
    file = path / "encoder.safetensors"
    tensors = load_file(str(file))
    tensors["fc.weight_renamed"] = tensors.pop("fc.weight")
    save_file(tensors, str(file))
    rewrite_meta_hash(path, "encoder.safetensors")
    ckpt = load_checkpoint(path)
    mods = make_modules(seed=5)
    before = mods["tied"].state_dict()["emb.weight"].clone()
    with pytest.raises(CheckpointError) as err:
        load_components_strict(ckpt, {**mods, "extra": nn.Module()})
    msg = str(err.value)
    assert "encoder.safetensors" in msg
    assert "missing tensors (in the module, not in the state dict): ['fc.weight']" in msg
    assert "['fc.weight_renamed']" in msg
    # nothing was written into any module, not even the components checked before
    assert torch.equal(mods["tied"].state_dict()["emb.weight"], before)


def test_shape_mismatch_names_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save(path)
    ckpt = load_checkpoint(path)
    mods = make_modules(0)
    mods["encoder"].fc = nn.Linear(3, 5)  # type: ignore[assignment]
    with pytest.raises(
        CheckpointError,
        match=r"encoder.safetensors: .*fc.bias: module expects \(5,\), state dict has \(4,\)",
    ):
        load_components_strict(ckpt, {**mods, "extra": nn.Module()})


def test_crash_mid_save_keeps_old_checkpoint(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ckpt"
    save(path, seed=0, step=1)
    old_hashes = read_meta(path)["sha256"]
    real = ck._save_tensors
    calls = []

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        real(*args, **kwargs)

    monkeypatch.setattr(ck, "_save_tensors", failing)
    with pytest.raises(OSError, match="disk full"):
        save(path, seed=9, step=2)
    assert len(calls) == 2
    assert os.listdir(tmp_path) == ["ckpt"], "temporary directory left behind"
    ckpt = load_checkpoint(path)
    assert ckpt.meta["step"] == 1 and ckpt.meta["sha256"] == old_hashes
    monkeypatch.setattr(ck, "_save_tensors", real)

    # a failure in the final rename puts the old checkpoint back where it was
    real_rename = os.rename

    def bad_rename(src, dst):  # type: ignore[no-untyped-def]
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(ck.os, "rename", bad_rename)
    with pytest.raises(OSError, match="rename failed"):
        save(path, seed=9, step=3)
    monkeypatch.setattr(ck.os, "rename", real_rename)
    assert os.listdir(tmp_path) == ["ckpt"]
    assert load_checkpoint(path).meta["step"] == 1

    save(path, seed=9, step=4)
    assert os.listdir(tmp_path) == ["ckpt"]
    assert load_checkpoint(path).meta["step"] == 4


def test_interrupted_between_renames_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    save(path, step=5)
    os.rename(path, tmp_path / ".ckpt.old")  # what a hard crash between the renames leaves
    with pytest.warns(RuntimeWarning, match="interrupted save"):
        assert load_checkpoint(path).meta["step"] == 5
    save(path, step=6)
    assert os.listdir(tmp_path) == ["ckpt"]
    assert load_checkpoint(path).meta["step"] == 6


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="component name 'normalizer'"):
        save_checkpoint(tmp_path / "a", config={}, components={"normalizer": {}}, normalizer=None)
    with pytest.raises(CheckpointError, match=r"policy.yaml: config is not plain YAML"):
        save_checkpoint(tmp_path / "a", config={"x": object()}, components={}, normalizer=None)
    with pytest.raises(CheckpointError, match=r"meta.json: extra_meta is not JSON"):
        save_checkpoint(
            tmp_path / "a", config={}, components={}, normalizer=None, extra_meta={"x": {1, 2}}
        )
    assert os.listdir(tmp_path) == []
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nothing")


def test_no_normalizer_and_empty_component(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "pid",
        config={"policy": {"type": "pid"}},
        components={"none": {}},
        normalizer=None,
    )
    ckpt = load_checkpoint(path)
    assert ckpt.normalizer is None and ckpt.component_state == {"none": {}}
    load_components_strict(ckpt, {"none": nn.Module()})
