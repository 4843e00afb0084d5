"""Temporaries of killed saves: named for their writer, removed only when it is provably dead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import envactor.fsio as fsio
from envactor.checkpoint import load_checkpoint, save_checkpoint
from envactor.fsio import clean_stale_temps, make_temp_dir, temp_owner, writer_is_dead

LINUX = Path("/proc/self/stat").is_file()


def save(path: Path, step: int = 0) -> Path:
    return save_checkpoint(
        path,
        config={"policy": {"type": "pid"}},
        components={"net": {"w": torch.full((64,), float(step))}},
        normalizer=None,
        step=step,
    )


def dead_writer_temp(target: Path) -> tuple[Path, int]:
    """A temporary of ``target`` made by a child process that then exited (a killed save)."""
    code = (
        "import os, sys; from pathlib import Path; from envactor.fsio import make_temp_dir; "
        "t = make_temp_dir(Path(sys.argv[1])); (t / 'net.safetensors').write_bytes(b'x' * 4096); "
        "print(os.getpid(), t, sep='\\n')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    pid, tmp = int(out[0]), Path(out[1])
    assert tmp.parent == target.parent and tmp.is_dir() and pid != os.getpid()
    return tmp, pid


def test_temp_name_records_the_writer(tmp_path: Path) -> None:
    tmp = make_temp_dir(tmp_path / "ckpt")
    assert tmp.parent == tmp_path and tmp.name.startswith(f".ckpt.tmp-{os.getpid()}-")
    owner = temp_owner(tmp.name)
    assert owner is not None and owner.pid == os.getpid() and owner.same_host
    if LINUX:
        assert owner.start == fsio.process_start_time(os.getpid()) and owner.start > 0
    assert not writer_is_dead(owner)
    assert temp_owner(".ckpt.tmp-abc123") is None  # the older mkdtemp naming carries no writer
    assert temp_owner("ckpt") is None


def test_dead_writer_temp_removed_live_writer_temp_kept(tmp_path: Path) -> None:
    dead, pid = dead_writer_temp(tmp_path / "ckpt")
    owner = temp_owner(dead.name)
    assert owner is not None and owner.pid == pid and writer_is_dead(owner)
    live = make_temp_dir(tmp_path / "ckpt")  # a save in progress in this (live) process
    legacy = tmp_path / ".ckpt.tmp-k3j2h1g0"  # no writer recorded: cannot be proven dead
    legacy.mkdir()
    other_host = tmp_path / f".ckpt.tmp-{pid}-0-ffffffff-{fsio._boot_tag()}-abc"
    if fsio._host_tag() == "ffffffff":  # pragma: no cover - a one in 4e9 host name
        pytest.skip("host tag collides with the fake one")
    other_host.mkdir()
    unrelated = tmp_path / ".ckpt.old"
    unrelated.mkdir()

    assert clean_stale_temps(tmp_path) == [dead]
    assert not dead.exists()
    assert live.is_dir() and legacy.is_dir() and other_host.is_dir() and unrelated.is_dir()
    assert clean_stale_temps(tmp_path) == []  # nothing else is provably dead


def test_next_save_and_next_load_clean_their_parent(tmp_path: Path) -> None:
    dead, _ = dead_writer_temp(tmp_path / "ckpt")
    live = make_temp_dir(tmp_path / "ckpt")
    save(tmp_path / "ckpt", step=1)
    assert not dead.exists() and live.is_dir()
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt", live.name])

    dead2, _ = dead_writer_temp(tmp_path / "ckpt")
    assert load_checkpoint(tmp_path / "ckpt").meta["step"] == 1
    assert not dead2.exists() and live.is_dir()


def test_next_training_save_cleans_killed_step_saves(tmp_path: Path) -> None:
    import numpy as np

    from envactor import build_policy
    from envactor.train.state import save_training_checkpoint

    ck_dir = tmp_path / "run" / "checkpoints"
    ck_dir.mkdir(parents=True)
    dead, _ = dead_writer_temp(ck_dir / "step_000100")  # a training save killed mid-write
    live = make_temp_dir(ck_dir / "step_000100")
    policy = build_policy("mlp_chunk")
    opt = torch.optim.AdamW(policy.parameters())
    save_training_checkpoint(tmp_path / "run", 100, policy, opt, np.random.default_rng(0), {})
    assert not dead.exists()
    assert sorted(os.listdir(ck_dir)) == sorted(["last", "step_000100", live.name])


@pytest.mark.skipif(not LINUX, reason="process start times come from /proc")
def test_reused_pid_is_detected_by_start_time(tmp_path: Path) -> None:
    live = make_temp_dir(tmp_path / "a")
    me = temp_owner(live.name)
    assert me is not None
    reused = tmp_path / f".b.tmp-{me.pid}-{me.start + 1}-{me.host}-{me.boot}-zz"
    reused.mkdir()  # our pid, but a process that started at another time: not us
    rebooted = tmp_path / f".c.tmp-{me.pid}-{me.start}-{me.host}-{'1' * 8}-zz"
    if me.boot in ("1" * 8, "0" * 8):  # pragma: no cover - no boot id on this system
        pytest.skip("no boot id")
    rebooted.mkdir()  # written before the last reboot
    assert sorted(clean_stale_temps(tmp_path)) == sorted([reused, rebooted])
    assert list(tmp_path.iterdir()) == [live]


def test_cleaning_an_unreadable_parent_is_silent(tmp_path: Path) -> None:
    assert clean_stale_temps(tmp_path / "missing") == []
