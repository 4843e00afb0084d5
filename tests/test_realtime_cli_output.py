"""``envactor run``: its result table is printed whole (never cut, piped or at 40 columns) and
``--max-obs-age`` takes seconds, ``auto`` (its default, shown by ``--help``) or ``off``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from envactor import build_policy, save_policy
from envactor.cli import build_parser, main
from envactor.normalize import Normalizer
from envactor.runtime.realtime.cli import add_run_args


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pol = build_policy("mlp_chunk", overrides=["policy.params.action_norm=identity"])
    pol.normalizer = Normalizer(
        {"observation.state": "mean_std", "action": "identity"},
        {"observation.state": {"mean": np.zeros(3), "std": np.ones(3)}},
    )
    return save_policy(pol, tmp_path_factory.mktemp("run_cli") / "ckpt")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_args(parser)
    return parser.parse_args(["Pendulum-v1", "--ckpt", "unused", *argv])


def test_max_obs_age_values() -> None:
    assert parse().max_obs_age == "auto"
    assert parse("--max-obs-age", "AUTO").max_obs_age == "auto"
    assert parse("--max-obs-age", "off").max_obs_age is None
    assert parse("--max-obs-age", "0.25").max_obs_age == 0.25


@pytest.mark.parametrize("bad", ["0", "-1", "inf", "soon"])
def test_bad_max_obs_age_is_one_line(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "Pendulum-v1", "--ckpt", "unused", "--max-obs-age", bad])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert (
        f"--max-obs-age: expected seconds (a finite number > 0), 'auto' or 'off', got {bad!r}"
        in err
    )


def test_help_states_the_real_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    sub = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    text = " ".join(sub.format_help().split())
    assert "(default: auto)" in text and "--max-obs-age SECONDS|auto|off" in text
    assert "(default: None)" not in text


def test_run_table_is_never_cut(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    code = main(["run", "Pendulum-v1", "--ckpt", str(ckpt), "--seconds", "0.3", "--sim-clock",
                 "controller", "--no-limits", "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "…" not in out
    lines = out.splitlines()
    assert any("episodes finished" in line for line in lines)
    assert any("envactor run Pendulum-v1: mlp_chunk" in line for line in lines)  # title whole
    width = {len(line) for line in lines if line.startswith(("┏", "┃", "│", "└"))}
    assert len(width) == 1 and width.pop() > 40  # natural width when piped, not COLUMNS
