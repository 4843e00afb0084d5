"""docs/robots.md's SimBot examples run as written where LeRobot is installed: each
``envactor`` command of its SimBot shell block as a real process from a folder laid out like the
repository after ``make demo`` (``runs/demo/policy`` a checkpoint of the demo's kind,
``tests/`` the repository's), then its Python block (marked ``python-norun`` on the page, since
the main test run has no LeRobot) in that folder."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lerobot.robots")

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "robots.md"
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)
SIMBOT = "simbot.py:SimBot"


def _blocks(tag: str) -> list[str]:
    return [code for t, code in FENCE.findall(PAGE.read_text()) if t == tag and SIMBOT in code]


def _commands(block: str) -> list[list[str]]:
    text = block.replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("envactor ")]


@pytest.fixture
def repo_like(tmp_path: Path, demo_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import shutil

    shutil.copytree(demo_checkpoint, tmp_path / "runs" / "demo" / "policy")
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_page_has_the_examples() -> None:
    (shell,) = _blocks("bash")
    assert [c[:2] for c in _commands(shell)] == [["envactor", "run"], ["envactor", "run"]]
    assert "--dry-run" in shell and "--record" in shell
    assert len(_blocks("python-norun")) == 1


def test_shell_examples_run(repo_like: Path) -> None:
    (shell,) = _blocks("bash")
    for cmd in _commands(shell):
        done = subprocess.run(
            [sys.executable, "-m", "envactor.cli", *cmd[1:], "--no-progress"],
            cwd=repo_like, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{shlex.join(cmd)}:\n{done.stdout}\n{done.stderr}"
        assert "does not read (recorded, not used): ['observation.images.front']" in done.stdout
    dry = repo_like / "runs" / "simbot-dry-run"
    assert {p.name for p in dry.iterdir()} == {"steps.csv", "telemetry.json", "actions.png"}
    info = json.loads((repo_like / "runs" / "simbot-data" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2 and info["robot_type"] == "envactor_simbot"


def test_python_example_runs(repo_like: Path) -> None:
    (code,) = _blocks("python-norun")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    exec(compile(code, str(PAGE), "exec"), namespace)
    arm = namespace["arm"]
    assert not arm.is_connected and arm.disconnects == 1  # type: ignore[attr-defined]
    assert namespace["telemetry"].steps == len(arm.sent) >= 100  # type: ignore[attr-defined]
