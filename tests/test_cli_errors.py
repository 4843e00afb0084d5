"""Every common mistake on the command line is one line on stderr with exit code 2, never a
traceback; each case runs ``envactor`` as a real process (about 2 s each: torch is imported)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from envactor import build_policy, save_policy
from envactor.checkpoint import CheckpointError
from envactor.cli import error_line, main
from envactor.normalize import Normalizer
from envactor.train import TrainError

TASK = "envactor/PendulumSwingUp-v0"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint ``ckpt``, a training run dir ``run`` holding it as its only step
    checkpoint (``checkpoints/last`` names it), runs whose ``checkpoints/last`` names a missing
    step (``broken``) or is missing (``nolast``), and an existing dataset folder ``data``."""
    root = tmp_path_factory.mktemp("cli_errors")
    policy = build_policy("mlp_chunk")
    policy.normalizer = Normalizer(
        {"observation.state": "mean_std", "action": "min_max"},
        {
            "observation.state": {"mean": np.zeros(3), "std": np.ones(3)},
            "action": {"min": np.array([-2.0]), "max": np.array([2.0])},
        },
    )
    save_policy(policy, root / "ckpt")
    step = root / "run" / "checkpoints" / "step_000002"
    save_policy(policy, step / "policy", step=2)
    (root / "run" / "checkpoints" / "last").write_text("step_000002\n")
    for run in ("broken", "nolast"):  # a pointer to a step that is gone; no pointer at all
        one = root / run / "checkpoints" / "step_000001"
        save_policy(policy, one / "policy", step=1)
    (root / "broken" / "checkpoints" / "last").write_text("step_000009\n")
    (root / "data").mkdir()
    (root / "data" / "info.json").write_text("{}")
    return root


def envactor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``envactor ARGS`` as a process in ``cwd`` (stdout and stderr captured, no debug mode)."""
    env = {k: v for k, v in os.environ.items() if k != "ENVACTOR_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "envactor.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert res.returncode == 2, (res.returncode, res.stderr)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


CASES = {
    "mistyped --env": (
        ["eval", "ckpt", "--env", "envactor/PendulumSwingUpp-v0"],
        ["envactor/PendulumSwingUpp-v0", "did you mean 'envactor/PendulumSwingUp-v0'"],
    ),
    "eval --episodes 0": (["eval", "ckpt", "--env", TASK, "--episodes", "0"], ["--episodes"]),
    "eval --num-envs 0": (["eval", "ckpt", "--env", TASK, "--num-envs", "0"], ["--num-envs"]),
    "collect into an existing dataset": (
        ["collect", TASK, "--episodes", "1", "--out", "data", "--no-progress"],
        ["--overwrite"],
    ),
    "train into a run with checkpoints": (
        ["train", "mlp_chunk", "--data", "data", "--out", "run", "--no-progress"],
        ["--resume"],
    ),
    "run dir given as a checkpoint": (
        ["eval", "run", "--env", TASK, "--episodes", "1"],
        ["step_000002"],
    ),
    "checkpoints/last naming a missing step": (
        ["eval", "broken/checkpoints/last", "--env", TASK, "--episodes", "1"],
        ["broken/checkpoints/last: expected the name of a step_<n> directory", "step_000001"],
    ),
    "checkpoints/last missing": (
        ["eval", "nolast/checkpoints/last", "--env", TASK, "--episodes", "1"],
        ["nolast/checkpoints/last: no such file", "step_000001"],
    ),
    "run --hz inf": (["run", TASK, "--ckpt", "ckpt", "--hz", "inf", "--seconds", "1"], ["--hz"]),
    "serve per-key limit 0": (
        ["serve", "mlp_chunk", "--max-connections-per-key", "0"],
        ["--max-connections-per-key", "expected an integer >= 1"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mistake_is_one_line_exit_2(case: str, work: Path) -> None:
    args, needles = CASES[case]
    line = assert_one_line_error(envactor(*args, cwd=work), *needles)
    assert "=True" not in line  # CLI flags, not Python keywords


def test_checkpoints_last_evaluates_the_newest_step(work: Path) -> None:
    """``checkpoints/last`` is the newest step's ``policy/`` checkpoint: eval runs on it and
    names that folder (not the pointer file); ``info`` prints the same folder."""
    real = work / "run" / "checkpoints" / "step_000002" / "policy"
    res = envactor(
        "eval", "run/checkpoints/last", "--env", TASK, "--episodes", "1", "--num-envs", "1",
        "--max-episode-steps", "3", cwd=work,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout.splitlines()[1] == f"policy: {real.resolve()}"
    res = envactor("info", "run/checkpoints/last", cwd=work)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == f"checkpoint  {real.resolve()}"


def test_train_online_unknown_executor_fails_before_any_work(work: Path) -> None:
    res = envactor(
        "train-online", "--workers", "0", "--executor", "foo", "--out", "online", cwd=work
    )
    assert_one_line_error(res, "foo")
    assert not (work / "online").exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--num-envs", "0"), ("--eval-episodes", "0"), ("--episodes-per-iter", "-1"),
     ("--num-envs", "1.5"), ("--eval-episodes", "inf")],
)  # fmt: skip
def test_train_online_sizes_are_refused_while_parsing(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "online"
    with pytest.raises(SystemExit) as exc:
        main(["train-online", "--workers", "0", "--out", str(out), flag, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"argument {flag}: expected an integer >= 1, got {value!r}" in err
    assert not out.exists()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_busy_port(work: Path, busy_port: int) -> None:
    res = envactor("serve", "ckpt", "--port", str(busy_port), "--no-warmup", cwd=work)
    assert_one_line_error(res, f"127.0.0.1:{busy_port}", "--port")


def test_closed_stdout_pipe_exits_quietly(work: Path) -> None:
    """``envactor eval --json | head``: the reader is gone before eval writes (here: before it
    starts), so every write fails; no traceback and no 'Exception ignored' message."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "envactor.cli", "eval", "ckpt", "--env", TASK,
             "--episodes", "1", "--max-episode-steps", "3", "--json"],
            cwd=work, stdout=write_end, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        os.close(write_end)
        os.close(read_end)
    _, err = proc.communicate(timeout=120)
    assert err == "" and proc.returncode == 1


def test_missing_checkpoint_in_process_and_debug_reraises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "nope")
    assert main(["info", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("envactor info: error: ") and missing in err and err.count("\n") == 1
    with pytest.raises(CheckpointError):
        main(["--debug", "info", missing])
    monkeypatch.setenv("ENVACTOR_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(["info", missing])


def test_error_line_names_flags_and_unquotes_key_errors() -> None:
    from envactor.registry import RegistryError

    assert error_line(RegistryError("unknown policy 'x'")) == "unknown policy 'x'"
    msg = (
        "out/checkpoints holds checkpoints; pass resume=True (--resume), or choose another out_dir"
    )
    assert error_line(TrainError(msg)) == (
        "out/checkpoints holds checkpoints; pass --resume, or choose another --out"
    )
    assert error_line(ValueError("d: exists; pass overwrite=True to replace it\n  line two")) == (
        "d: exists; pass --overwrite to replace it; line two"
    )
