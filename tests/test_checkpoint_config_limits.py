"""A checkpoint's ``policy.yaml`` is read with the config loader's limits: an alias bomb or an
oversized file is refused quickly with one clear line, and what a save writes reads back equal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import envactor.checkpoint as ck
from envactor.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from envactor.cli import main
from envactor.config.limits import MAX_FILE_BYTES, MAX_NODES

CONFIG = {"policy": {"type": "mlp_chunk", "params": {"horizon": 8}}, "model": {"components": {}}}


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Billion laughs: level i lists ``width`` aliases of level i - 1 (width**levels strings)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    lines.append(f"policy: {{type: mlp_chunk, params: {{horizon: *a{levels - 1}}}}}")
    return "\n".join(lines) + "\n"


def checkpoint_with_config(path: Path, text: str) -> Path:
    """A valid checkpoint whose ``policy.yaml`` is replaced by ``text``, checksum updated."""
    save_checkpoint(path, config=CONFIG, components={"net": {"w": torch.ones(2)}}, normalizer=None)
    (path / ck.CONFIG_FILE).write_text(text)
    meta = json.loads((path / ck.META_FILE).read_text())
    meta["sha256"][ck.CONFIG_FILE] = ck._sha256(path / ck.CONFIG_FILE)
    (path / ck.META_FILE).write_text(json.dumps(meta))
    return path


@pytest.mark.timeout(60)
def test_alias_bomb_in_policy_yaml_is_refused_within_seconds(tmp_path: Path) -> None:
    text = alias_bomb()
    assert len(text) < 2000  # 9**9 = 387 million strings once expanded
    root = checkpoint_with_config(tmp_path / "ckpt", text)
    t0 = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(root)
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0, f"refused after {elapsed:.1f} s"
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{root / ck.CONFIG_FILE}:5: a4: ")
    assert "66,430 values once YAML aliases (*name) are expanded" in msg
    assert f"at most {MAX_NODES:,}" in msg and msg.endswith("(not a config envactor saves)")


@pytest.mark.timeout(60)
def test_cli_refuses_the_bomb_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = checkpoint_with_config(tmp_path / "ckpt", alias_bomb())
    assert main(["info", str(root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("envactor info: error: ") and "alias" in captured.err


def test_oversized_policy_yaml_is_refused_before_parsing(tmp_path: Path) -> None:
    text = "policy: {type: mlp_chunk}\n" + "# padding\n" * (MAX_FILE_BYTES // 10 + 1)
    root = checkpoint_with_config(tmp_path / "ckpt", text)
    with pytest.raises(CheckpointError, match=f"at most {MAX_FILE_BYTES:,} bytes"):
        load_checkpoint(root)


def test_policy_yaml_that_is_not_a_mapping_names_the_file(tmp_path: Path) -> None:
    root = checkpoint_with_config(tmp_path / "ckpt", "- just\n- a list\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(root)
    msg = str(info.value)
    assert msg.startswith(f"{root / ck.CONFIG_FILE}:1: expected the resolved policy config")
    assert "found a list" in msg and "just" not in msg  # never quotes the file's content


def test_saved_config_reads_back_equal(tmp_path: Path) -> None:
    """Strings that look like exponent floats (``"1e5"``) are quoted on save, since the config
    loader reads unquoted ``1e5`` as a float; real floats stay floats."""
    config = {
        "policy": {"type": "mlp_chunk", "params": {"tag": "1e5", "lr": 1e-4, "name": "a: b"}},
        "model": {"components": {"net": {"type": "mlp", "dims": [4, 4]}}},
    }
    save_checkpoint(tmp_path / "c", config=config, components={}, normalizer=None)
    loaded = load_checkpoint(tmp_path / "c").config
    assert loaded == config
    assert isinstance(loaded["policy"]["params"]["tag"], str)
    assert isinstance(loaded["policy"]["params"]["lr"], float)
