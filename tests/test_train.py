"""The learn-mode loop: loss goes down, seeds reproduce, resume equals an uninterrupted run."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")

from safetensors.torch import load_file

from envactor.cli import error_line
from envactor.data import DatasetError, DatasetWriter, EpisodeDataset, dataset_stats
from envactor.policy import build_policy
from envactor.train import (
    TrainConfig,
    TrainError,
    add_train_args,
    latest_checkpoint,
    lr_at,
    norm_modes,
    run_train,
    train,
)

FAST: dict[str, Any] = dict(batch_size=16, lr=3e-3, warmup_steps=2, progress=False, log_every=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six episodes of s' = M s (a damped rotation) with the expert action tanh(w . s): the
    whole action chunk is a function of the current state, so the loss can go to ~0."""
    root = tmp_path_factory.mktemp("train") / "ds"
    rng = np.random.default_rng(0)
    c, s_ = np.cos(0.3), np.sin(0.3)
    m = np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 0.9]])
    feats = {
        "observation.state": {"shape": [3], "dtype": "float32"},
        "action": {"shape": [1], "dtype": "float32"},
    }
    with DatasetWriter(root, feats, fps=20, task="rotate") as w:
        for n in (12, 20, 15, 9, 18, 14):
            states = [rng.normal(size=3)]
            for _ in range(n - 1):
                states.append(m @ states[-1])
            st = np.stack(states)
            w.add_episode(
                {"observation.state": st, "action": np.tanh(st @ [1.0, -0.5, 0.25])[:, None]}
            )
    return root


def weights(step_dir: Path, section: str = "train") -> dict[str, torch.Tensor]:
    tensors = load_file(str(step_dir / "trainer_state.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith(section + "/")}


def log_losses(out: Path) -> list[float]:
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return [json.loads(ln)["loss"] for ln in lines]


def test_lr_schedule_worked_values() -> None:
    cfg = TrainConfig(steps=6, lr=1.0, warmup_steps=2)
    got = [lr_at(s, cfg) for s in range(6)]
    # warmup (s+1)/2, then 0.5 (1 + cos(pi (s-2)/4))
    want = [0.5, 1.0, 1.0, 0.8535533906, 0.5, 0.1464466094]
    assert got == pytest.approx(want, abs=1e-9)
    with pytest.raises(ValueError, match="batch_size=0"):
        TrainConfig(batch_size=0)


def test_training_reduces_loss_and_checkpoint_loads(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = train("mlp_chunk", data, out_dir=out, steps=60, save_every=30, seed=1, **FAST)
    assert res.step == 60 and len(res.losses) == 60 and res.samples_per_s > 0
    assert np.mean(res.losses[-10:]) < 0.1 * np.mean(res.losses[:3])
    assert res.checkpoint == out / "checkpoints/step_000060/policy"
    assert (out / "checkpoints/last").read_text().strip() == "step_000060"
    assert latest_checkpoint(out) == out / "checkpoints/step_000060"
    assert (out / "checkpoints/step_000030/policy/meta.json").is_file()
    assert log_losses(out) == pytest.approx(res.losses, abs=1e-6)
    # the checkpoint carries the dataset's stats and predicts like the trained policy
    loaded = build_policy(res.checkpoint)
    assert loaded.normalizer is not None
    want = dataset_stats(EpisodeDataset(data), norm_modes(loaded))
    for key in ("observation.state", "action"):
        for stat, value in want.stats[key].items():
            np.testing.assert_allclose(loaded.normalizer.stats[key][stat], value, atol=1e-12)
    obs = {"observation.state": np.array([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], np.float32)}
    np.testing.assert_allclose(loaded.predict(obs), res.policy.predict(obs), atol=1e-6)
    assert loaded.predict(obs).shape == (2, 8, 1)


def test_same_seed_same_curve(data: Path, tmp_path: Path) -> None:
    kw = dict(steps=8, save_every=100, **FAST)
    a = train("mlp_chunk", data, out_dir=tmp_path / "a", seed=5, **kw)
    b = train("mlp_chunk", data, out_dir=tmp_path / "b", seed=5, **kw)
    c = train("mlp_chunk", data, out_dir=tmp_path / "c", seed=6, **kw)
    assert a.losses == b.losses
    assert a.losses != c.losses
    wa, wb = (
        weights(tmp_path / "a/checkpoints/step_000008"),
        weights(tmp_path / "b/checkpoints/step_000008"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_equals_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    # EMA and dropout on: the EMA shadow and the torch RNG must be restored too
    ovr = ["policy.params.ema_decay=0.9", "model.components.net.dropout=0.2"]
    kw = dict(steps=20, save_every=10, seed=3, overrides=ovr, **FAST)
    full = train("mlp_chunk", data, out_dir=tmp_path / "full", **kw)
    part = train("mlp_chunk", data, out_dir=tmp_path / "part", stop_at=10, **kw)
    assert (
        part.step == 10
        and (tmp_path / "part/checkpoints/last").read_text().strip() == "step_000010"
    )
    with open(tmp_path / "part/train_log.jsonl", "a") as f:  # a crash after step 10 logged more
        f.write(json.dumps({"step": 11, "loss": 123.0}) + '\n{"step": 12, "lo')  # torn line
    rest = train("mlp_chunk", data, out_dir=tmp_path / "part", resume=True, **kw)
    assert rest.step == 20 and len(rest.losses) == 10
    assert part.losses + rest.losses == full.losses
    assert log_losses(tmp_path / "part") == log_losses(tmp_path / "full")
    a, b = tmp_path / "full/checkpoints/step_000020", tmp_path / "part/checkpoints/step_000020"
    for section in ("train", "ema", "optim"):
        wa, wb = weights(a, section), weights(b, section)
        assert wa and wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k
    # EMA is really on: acting weights differ from the training weights
    assert not torch.equal(
        weights(a, "ema")["ema/net.net.0.weight"], weights(a)["train/net.net.0.weight"]
    )
    pa, pb = build_policy(a / "policy"), build_policy(b / "policy")
    for (ka, ta), (kb, tb) in zip(pa.state_dict().items(), pb.state_dict().items()):
        assert ka == kb and torch.equal(ta, tb)


def test_refusals(data: Path, tmp_path: Path) -> None:
    """Python callers read the keyword (``resume=True``, ``out_dir``); the CLI prints the same
    error with its flags (``--resume``, ``--out``)."""
    none = tmp_path / "none" / "checkpoints"
    with pytest.raises(TrainError) as info:
        train("mlp_chunk", data, out_dir=tmp_path / "none", resume=True, **FAST)
    assert str(info.value) == (f"resume=True but {none} holds no step_* checkpoint to resume from")
    assert error_line(info.value).startswith(f"--resume but {none} holds no step_* checkpoint")
    train("mlp_chunk", data, out_dir=tmp_path / "r", steps=2, save_every=2, **FAST)
    with pytest.raises(TrainError) as info:
        train("mlp_chunk", data, out_dir=tmp_path / "r", steps=2, **FAST)
    assert str(info.value) == (
        f"{tmp_path / 'r' / 'checkpoints'} already holds checkpoints (step_000002, ...); pass "
        "resume=True to continue that run, or choose another out_dir"
    )
    assert error_line(info.value).endswith(
        "pass --resume to continue that run, or choose another --out"
    )
    with pytest.warns(
        RuntimeWarning, match=r"changed settings \(steps: 2 -> 3; lr: 0.003 -> 0.001"
    ):
        more = train("mlp_chunk", data, out_dir=tmp_path / "r", steps=3, resume=True,
                     **{**FAST, "lr": 1e-3})  # fmt: skip
    assert more.step == 3 and len(more.losses) == 1
    with pytest.raises(DatasetError, match=r"'observation.state' is shape \[3\] float32; policy"):
        train(
            "mlp_chunk",
            data,
            out_dir=tmp_path / "s",
            steps=2,
            overrides=[
                'policy.params.input_features={"observation.state": {shape: [4]}}',
                "model.components.net.in_dim=4",
            ],
            **FAST,
        )


def test_cli_hooks(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    out = tmp_path / "cli"
    args = parser.parse_args(
        [
            "mlp_chunk",
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--no-progress",
            "--json",
            "--grad-clip",
            "0",
        ]
    )
    assert run_train(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 3 and summary["checkpoint"].endswith("step_000003/policy")
    assert math.isfinite(summary["final_loss"])
    cfg = json.loads((out / "checkpoints/step_000003/trainer_state.json").read_text())["config"]
    assert cfg["grad_clip"] is None and cfg["batch_size"] == 8
