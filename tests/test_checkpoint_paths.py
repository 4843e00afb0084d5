"""What a checkpoint path may be: refused look-alikes, training runs, ``checkpoints/last``,
temporaries of killed saves and the crash between a save's two renames (load and build)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envactor import build_policy, save_policy
from envactor.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint_dir
from envactor.cli import main
from envactor.fsio import make_temp_dir
from envactor.policy import Policy
from envactor.train.state import save_training_checkpoint

EXPECTED = "expected a checkpoint directory written by envactor: meta.json"


def policy_with(value: float) -> Policy:
    policy = build_policy("mlp_chunk")
    with torch.no_grad():
        for p in policy.components.parameters():
            p.fill_(value)
    return policy


def weights(policy: Policy) -> list[float]:
    return sorted({float(v) for p in policy.components.parameters() for v in p.detach().flatten()})


def train_run(root: Path, steps: tuple[int, ...] = (100, 200)) -> Path:
    """A training run directory as the trainer writes it; step ``n`` has every weight = n."""
    for step in steps:
        policy = policy_with(float(step))
        opt = torch.optim.AdamW(policy.parameters())
        save_training_checkpoint(root, step, policy, opt, np.random.default_rng(0), {"s": step})
    return root


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit 2 with one error line and no traceback; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


EVAL = ["--env", "envactor/PendulumSwingUp-v0", "--episodes", "1", "--num-envs", "1"]


# ------------------------------------------------------------------ no valid meta.json
def test_dir_without_meta_is_refused_not_random_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = save_policy(policy_with(0.5), tmp_path / "ckpt")
    (ckpt / "meta.json").unlink()  # policy.yaml + net.safetensors remain
    for call in (load_checkpoint, build_policy):
        with pytest.raises(CheckpointError) as err:
            call(ckpt)
        msg = str(err.value)
        assert msg.startswith(f"{ckpt}: not a checkpoint, meta.json is missing")
        assert EXPECTED in msg and "found net.safetensors, policy.yaml" in msg
    line = cli_error(["info", str(ckpt)], capsys)
    assert "meta.json is missing" in line and "found net.safetensors, policy.yaml" in line
    line = cli_error(["eval", str(ckpt), *EVAL], capsys)
    assert "meta.json is missing" in line

    (ckpt / "policy.yaml").unlink()  # component weights only
    with pytest.raises(CheckpointError, match=r"meta.json is missing.*found net.safetensors$"):
        build_policy(ckpt)
    shutil.rmtree(ckpt)
    ckpt.mkdir()
    with pytest.raises(CheckpointError, match="found an empty directory"):
        build_policy(ckpt)


@pytest.mark.parametrize(
    ("meta", "why"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
        ('{"format": 1, "components": ["net"]}', "'sha256': expected a map"),
        ('{"format": "1", "sha256": {}, "components": []}', "'format': expected an integer"),
        ('{"format": true, "sha256": {}, "components": []}', "'format': expected an integer"),
        ('{"format": 1, "sha256": {}, "components": ["../../x"]}', "'components': expected"),
        ('{"format": 1, "sha256": {"../x": "00"}, "components": []}', "'sha256': expected plain"),
        ('{"format": 1, "sha256": {}, "components": [], "normalizer": 1}', "'normalizer'"),
        ('{"format": 1, "sha256": {}, "components": [], "weight_version": "7"}', "weight_version"),
    ],
)
def test_invalid_meta_is_refused_with_what_was_expected(
    tmp_path: Path, meta: str, why: str
) -> None:
    ckpt = save_policy(policy_with(0.5), tmp_path / "ckpt")
    (ckpt / "meta.json").write_text(meta)
    for call in (load_checkpoint, build_policy):
        with pytest.raises(CheckpointError) as err:
            call(ckpt)
        msg = str(err.value)
        assert msg.startswith(f"{ckpt / 'meta.json'}: ") and why in msg
        assert "expected the meta.json of a checkpoint directory written by envactor" in msg


# ------------------------------------------------------------------ temporaries of a save
def test_temporary_directories_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "ckpt"
    # a save killed after writing everything but before its rename: complete, still refused
    tmp = make_temp_dir(target)
    shutil.copytree(save_policy(policy_with(0.5), tmp_path / "src"), tmp, dirs_exist_ok=True)
    load_checkpoint(tmp_path / "src")  # the same files load from a real checkpoint
    for call in (load_checkpoint, build_policy):
        with pytest.raises(CheckpointError) as err:
            call(tmp)
        msg = str(err.value)
        assert msg.startswith(f"{tmp}: a temporary directory of a save of {target}")
        assert f"may still be writing it); load {target} instead" in msg
    assert "temporary directory" in cli_error(["info", str(tmp)], capsys)

    legacy = tmp_path / ".ckpt.tmp-a1b2c3d4"  # the older naming, writer unknown
    shutil.copytree(tmp, legacy)
    with pytest.raises(CheckpointError, match="may be incomplete; delete it once no save"):
        build_policy(legacy)

    # the policy inside a trainer step's temporary directory
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    step_tmp = make_temp_dir(tmp_path / "run" / "checkpoints" / "step_000100")
    shutil.copytree(tmp, step_tmp / "policy")
    with pytest.raises(CheckpointError, match=r"a temporary directory of a save of .*step_000100"):
        build_policy(step_tmp / "policy")


def test_temporary_of_dead_writer_says_it_is_abandoned(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from envactor.fsio import make_temp_dir; "
        "print(make_temp_dir(Path(sys.argv[1])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ckpt")],
        check=True,
        capture_output=True,
        text=True,
    )
    tmp = Path(out.stdout.strip())
    with pytest.raises(CheckpointError, match=r"its writer \(pid \d+\) is gone"):
        load_checkpoint(tmp)


# ------------------------------------------------------------------ crash between the renames
def test_crash_between_renames_is_recovered_by_build_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = save_policy(policy_with(0.25), tmp_path / "ckpt", step=5)
    # a second save killed between os.rename(ckpt, .ckpt.old) and os.rename(tmp, ckpt)
    code = (
        "import sys; from pathlib import Path; from envactor.fsio import make_temp_dir; "
        "t = make_temp_dir(Path(sys.argv[1])); (t / 'net.safetensors').write_bytes(b'0' * 64); "
        "print(t)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(ckpt)], check=True, capture_output=True, text=True
    )
    dead_tmp = Path(run.stdout.strip())
    os.rename(ckpt, tmp_path / ".ckpt.old")
    assert sorted(os.listdir(tmp_path)) == sorted([".ckpt.old", dead_tmp.name])

    with pytest.warns(RuntimeWarning, match="interrupted save"):
        policy = build_policy(ckpt)
    assert weights(policy) == [0.25]
    assert not dead_tmp.exists()  # the load removed the killed writer's temporary
    with pytest.warns(RuntimeWarning, match="interrupted save"):
        assert main(["info", str(ckpt)]) == 0
    assert "step=5" in capsys.readouterr().out
    save_policy(policy_with(0.75), ckpt, step=6)  # the next save puts things in order
    assert os.listdir(tmp_path) == ["ckpt"]
    assert weights(build_policy(ckpt)) == [0.75]


# ------------------------------------------------------------------ training run directories
def test_training_run_dir_lists_its_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = train_run(tmp_path / "run")
    steps = f"{run}/checkpoints/step_000100, {run}/checkpoints/step_000200"
    last = f"{run}/checkpoints/last names the newest"
    for call in (load_checkpoint, build_policy):
        with pytest.raises(CheckpointError) as err:
            call(run)
        assert str(err.value) == (
            f"{run} is a training run, not a checkpoint; checkpoints inside: {steps}; {last}"
        )
    with pytest.raises(CheckpointError, match=f"{run}/checkpoints is a training run"):
        build_policy(run / "checkpoints")
    line = cli_error(["info", str(run)], capsys)
    assert line.endswith(
        f"is a training run, not a checkpoint; checkpoints inside: {steps}; {last}"
    )
    assert "training run" in cli_error(["eval", str(run), *EVAL], capsys)
    with pytest.raises(CheckpointError, match=r"step_000300: no such checkpoint directory; "):
        build_policy(run / "checkpoints" / "step_000300")

    # the demo's layout: the exported policy next to the training run
    demo = tmp_path / "demo"
    shutil.copytree(run, demo / "train")
    save_policy(policy_with(1.0), demo / "policy")
    with pytest.raises(CheckpointError) as err:
        build_policy(demo)
    assert str(err.value).startswith(
        f"{demo} is a training run, not a checkpoint; checkpoints inside: {demo}/policy, "
        f"{demo}/train/checkpoints/step_000100, {demo}/train/checkpoints/step_000200"
    )
    # a folder of plain checkpoints
    (tmp_path / "many").mkdir()
    for i in range(8):
        (tmp_path / "many" / f"c{i}").mkdir()
        (tmp_path / "many" / f"c{i}" / "meta.json").write_text("{}")
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint_dir(tmp_path / "many")
    many = tmp_path / "many"
    assert str(err.value) == (
        f"{many} is a directory of checkpoints, not a checkpoint; checkpoints inside: "
        f"{many}/c0, {many}/c1, ..., {many}/c5, {many}/c6, {many}/c7 (8 in all)"
    )


def test_checkpoints_last_and_step_dirs_resolve_to_their_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = train_run(tmp_path / "run")
    last = run / "checkpoints" / "last"
    assert last.read_text().strip() == "step_000200"
    assert resolve_checkpoint_dir(last) == run / "checkpoints" / "step_000200" / "policy"
    assert load_checkpoint(last).meta["step"] == 200
    assert weights(build_policy(last)) == [200.0]
    assert weights(build_policy(str(run / "checkpoints" / "step_000100"))) == [100.0]
    assert main(["info", str(last)]) == 0
    assert "step=200" in capsys.readouterr().out

    # a redo of step 200 killed between its renames: the step directory is set aside
    step = run / "checkpoints" / "step_000200"
    os.rename(step, run / "checkpoints" / ".step_000200.old")
    with pytest.warns(RuntimeWarning, match="interrupted save"):
        assert weights(build_policy(last)) == [200.0]
    os.rename(run / "checkpoints" / ".step_000200.old", step)

    last.write_text("step_000300\n")  # names a step that is not there
    with pytest.raises(CheckpointError) as err:
        build_policy(last)
    assert str(err.value) == (
        f"{last}: expected the name of a step_<n> directory next to it, found none that exists; "
        f"checkpoints in {run}/checkpoints: {run}/checkpoints/step_000100, "
        f"{run}/checkpoints/step_000200"
    )
    assert "step_000300" not in str(err.value)  # the file's content is never quoted
    last.unlink()
    with pytest.raises(CheckpointError, match=r"last: no such file \(the trainer writes it"):
        build_policy(last)
    assert "no such file" in cli_error(["info", str(last)], capsys)


def test_checkpoint_error_is_caught_by_the_cli() -> None:
    assert issubclass(CheckpointError, RuntimeError)


def test_yaml_and_names_still_build(tmp_path: Path) -> None:
    cfg = tmp_path / "p.yaml"
    ckpt = save_policy(policy_with(0.5), tmp_path / "ckpt")
    cfg.write_text((ckpt / "policy.yaml").read_text())
    assert weights(build_policy(cfg)) != [0.5]  # a YAML file is a config: fresh weights
    assert weights(build_policy(ckpt)) == [0.5]
    with pytest.raises(FileNotFoundError, match="no policy YAML, checkpoint directory"):
        build_policy("no_such_policy")
    json.loads((ckpt / "meta.json").read_text())  # untouched by loading
