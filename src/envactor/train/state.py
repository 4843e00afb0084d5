"""Training checkpoints: the acting policy plus everything needed to resume, without pickle.

    out_dir/checkpoints/
      step_000100/
        policy/                      a policy checkpoint (save_policy): load with build_policy
        trainer_state.safetensors    tensors: training weights, EMA shadow, optimizer state, RNG
        trainer_state.json           step, trainer config, numpy RNG state, optimizer param groups
      last                           text file: the name of the newest step directory

The optimizer state dict is flattened: tensor entries become ``optim/<param index>/<name>``
tensors, everything else (param groups, non-tensor state) goes to JSON. Each step directory is
written under a temporary name (``envactor.fsio.make_temp_dir``) and renamed into place; ``last``
is replaced atomically after. Temporaries of killed saves are removed by the next save once their
writer is provably dead. ``build_policy`` / ``load_checkpoint`` accept a step directory and
``checkpoints/last`` (the layout constants live in ``envactor.checkpoint``).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from envactor.checkpoint import RUN_CHECKPOINTS_DIR, RUN_LAST_FILE, STEP_DIR, STEP_POLICY_DIR
from envactor.fsio import clean_stale_temps, make_temp_dir
from envactor.fsio import fsync_path as _fsync
from envactor.fsio import write_text as _write_text
from envactor.normalize import Normalizer
from envactor.policy import Policy, save_policy
from envactor.policy.build import META_JSON
from envactor.weights import load_state_dict_into

__all__ = [
    "CHECKPOINTS_DIR",
    "LAST_FILE",
    "POLICY_DIR",
    "TrainError",
    "TrainerState",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainer_state",
    "restore_trainer_state",
    "save_training_checkpoint",
]

CHECKPOINTS_DIR = RUN_CHECKPOINTS_DIR
LAST_FILE = RUN_LAST_FILE
POLICY_DIR = STEP_POLICY_DIR
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
FORMAT = 1
_STEP_DIR = STEP_DIR


class TrainError(RuntimeError):
    """A training run that cannot start, resume or continue (the message says why and where)."""


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def _flat_state(sd: Mapping[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": _cpu(v) for k, v in sd.items()}


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    raise TrainError(f"{where}: cannot store {type(value).__name__} in JSON (no pickle)")


def _like(value: Any, template: Any) -> Any:
    """JSON ``value`` with tuples restored where ``template`` (the live param group) has them."""
    if isinstance(template, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def param_names(policy: Policy, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in order (checked on resume)."""
    names = {id(p): n for n, p in policy.named_parameters()}
    return [names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"]]


def save_training_checkpoint(
    out_dir: Path,
    step: int,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    config: Mapping[str, Any],
) -> Path:
    """Write ``checkpoints/step_<step>/`` atomically and point ``last`` at it; returns the dir."""
    root = out_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    target = root / name
    clean_stale_temps(root)
    tmp = make_temp_dir(target)
    try:
        save_policy(policy, tmp / POLICY_DIR, step=step)
        tensors, meta = _state_payload(policy, optimizer, rng)
        meta.update(step=step, config=_jsonable(dict(config), STATE_JSON))
        save_file(tensors, str(tmp / STATE_TENSORS), metadata={"envactor.trainer_state": "1"})
        _fsync(tmp / STATE_TENSORS)
        _write_text(tmp / STATE_JSON, json.dumps(meta, indent=1) + "\n")
        _fsync(tmp)
        if target.exists():  # a run that crashed after this step's save, now redone
            aside = root / f".{name}.old"
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(target, aside)
            os.rename(tmp, target)
            shutil.rmtree(aside)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / f".{LAST_FILE}.tmp"
    _write_text(pointer, name + "\n")
    os.replace(pointer, root / LAST_FILE)
    _fsync(root)
    return target


def _state_payload(
    policy: Policy, optimizer: torch.optim.Optimizer, rng: np.random.Generator
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    ema = policy.params.ema_decay is not None
    if ema:  # acting weights = the EMA shadow
        for comp, sd in policy.acting_state_dict().items():
            tensors.update({f"ema/{comp}.{k}": _cpu(v) for k, v in sd.items()})
    policy._learning()  # live tensors hold the training weights again
    tensors.update(_flat_state(policy.components.state_dict(), "train"))
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = _cpu(value)
            else:
                scalars.setdefault(str(idx), {})[key] = _jsonable(value, f"optimizer state {key}")
    tensors["rng/torch"] = torch.get_rng_state()
    if policy.device.type == "cuda":
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    meta = {
        "format": FORMAT,
        "policy": policy.name,
        "ema": ema,
        "param_names": param_names(policy, optimizer),
        "param_groups": _jsonable(opt["param_groups"], "optimizer param_groups"),
        "optim_scalars": scalars,
        "numpy_rng": _jsonable(rng.bit_generator.state, "numpy rng state"),
    }
    return tensors, meta


@dataclass
class TrainerState:
    """A loaded ``step_*`` directory."""

    path: Path
    step: int
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    normalizer: Normalizer | None

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``<prefix>/`` with the prefix removed."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + "/")}


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """``step_*`` directories under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The step directory named by ``checkpoints/last`` (else the highest step), or None."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    pointer = root / LAST_FILE
    found = list_checkpoints(out_dir)
    if pointer.is_file():
        target = root / pointer.read_text(encoding="utf-8").strip()
        if _STEP_DIR.match(target.name) and target.is_dir():
            return target
        warnings.warn(
            f"{pointer}: names {target.name!r}, which is not a step directory; using "
            f"{found[-1].name if found else 'none'}",
            RuntimeWarning,
            stacklevel=2,
        )
    return found[-1] if found else None


def load_trainer_state(step_dir: str | Path) -> TrainerState:
    """Read the trainer files and the normalizer of a step directory (strictly)."""
    path = Path(step_dir)
    json_path, tensor_path = path / STATE_JSON, path / STATE_TENSORS
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainError(f"{json_path}: cannot read trainer state: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "step" not in meta:
        raise TrainError(f"{json_path}: expected a trainer state object with format {FORMAT}")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as e:  # safetensors raises its own error type
        raise TrainError(f"{tensor_path}: cannot read tensors: {e}") from e
    norm_file = path / POLICY_DIR / "normalizer.safetensors"
    if not (path / POLICY_DIR / META_JSON).is_file():
        raise TrainError(f"{path / POLICY_DIR}: missing policy checkpoint ({META_JSON})")
    normalizer = Normalizer.load(norm_file) if norm_file.is_file() else None
    return TrainerState(path, int(meta["step"]), meta, tensors, normalizer)


def restore_trainer_state(
    state: TrainerState,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> None:
    """Put training weights, EMA shadow, optimizer, torch and numpy RNG back as saved."""
    where = state.path / STATE_TENSORS
    names = param_names(policy, optimizer)
    if names != state.meta.get("param_names"):
        raise TrainError(
            f"{state.path / STATE_JSON}: optimizer parameters differ from the policy's: saved "
            f"{len(state.meta.get('param_names', []))}, policy has {len(names)}; "
            "resume with the same policy config"
        )
    train_sd = state.section("train")
    if state.meta.get("ema"):
        if policy.params.ema_decay is None:
            raise TrainError(f"{state.path}: saved with EMA but the policy has ema_decay unset")
        # The shadow is created from the live weights by the first update(): load the EMA
        # weights, let update() copy them into a new shadow (an exact lerp of equal tensors),
        # then load the training weights into the live tensors only.
        policy.load_weights(state.section("ema"))
        policy.update()
        load_state_dict_into(policy.components, train_sd, strict=True)
    else:
        policy.load_weights(train_sd)
    template = optimizer.state_dict()
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in state.section("optim").items():
        idx, _, name = key.partition("/")
        opt_state.setdefault(int(idx), {})[name] = value
    for idx, entries in state.meta.get("optim_scalars", {}).items():
        opt_state.setdefault(int(idx), {}).update(entries)
    groups = []
    for saved, live in zip(state.meta["param_groups"], template["param_groups"]):
        groups.append({k: _like(v, live.get(k)) for k, v in saved.items()})
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise TrainError(f"{where}: optimizer state does not fit the optimizer: {e}") from e
    torch.set_rng_state(state.tensors["rng/torch"])
    cuda_keys = [k for k in state.tensors if k.startswith("rng/cuda/")]
    cuda = [state.tensors[k] for k in sorted(cuda_keys, key=lambda k: int(k.rsplit("/", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    rng.bit_generator.state = state.meta["numpy_rng"]
