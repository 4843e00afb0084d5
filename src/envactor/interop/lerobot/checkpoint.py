"""Recognizing a LeRobot ``pretrained_model`` folder, and importing LeRobot with a clear error."""

from __future__ import annotations

import importlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
PRETRAINED_DIR = "pretrained_model"
ACTION_KEY = "action"
# LeRobot policy type -> the config field that is the length of predict_action_chunk's output
CHUNK_LENGTH = {"act": "chunk_size", "diffusion": "n_action_steps"}

INSTALL_HINT = (
    "pip install lerobot (LeRobot 0.4.x pins torch<2.11: install it in a virtualenv of its own, "
    "or with `pip install --no-deps lerobot==0.4.4` plus its runtime packages on top of your "
    "torch, as `make test-lerobot` does; see the README's GPU/extras section)"
)


class LeRobotCheckpointError(ValueError):
    """A LeRobot checkpoint folder that cannot be loaded (missing file, unsupported policy)."""


class LeRobotNotInstalledError(ImportError):
    """A LeRobot checkpoint was given but LeRobot is not importable here."""


def lerobot_checkpoint_dir(path: str | Path) -> Path | None:
    """The LeRobot ``pretrained_model`` folder ``path`` names, or None when it names none.

    Accepted: the folder itself (``config.json`` whose ``type`` names the policy, beside
    ``model.safetensors``) or a LeRobot training step folder holding ``pretrained_model/``.
    """
    p = Path(path)
    if not p.is_dir():
        return None
    for cand in (p, p / PRETRAINED_DIR):
        cfg = cand / CONFIG_FILE
        if cfg.is_file() and (cand / MODEL_FILE).is_file() and _policy_type(cfg) is not None:
            return cand
    return None


def policy_type(folder: Path) -> str:
    """The ``type`` of the LeRobot policy saved in ``folder`` (its ``config.json``)."""
    found = _policy_type(folder / CONFIG_FILE)
    if found is None:
        raise LeRobotCheckpointError(
            f"{folder / CONFIG_FILE}: expected a JSON object with a string 'type' (the LeRobot "
            "policy type, e.g. 'act')"
        )
    return found


def _policy_type(config_file: Path) -> str | None:
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) and kind else None


def require_processors(folder: Path) -> None:
    """Raise when ``folder`` lacks the saved pre/post-processor pipelines."""
    missing = [f for f in (PREPROCESSOR_FILE, POSTPROCESSOR_FILE) if not (folder / f).is_file()]
    if missing:
        raise LeRobotCheckpointError(
            f"{folder}: a LeRobot checkpoint needs its saved processors {missing} (LeRobot >= 0.4 "
            "writes them with the policy: preprocessor.save_pretrained(DIR) and "
            "postprocessor.save_pretrained(DIR)); found "
            f"{sorted(c.name for c in folder.iterdir())}"
        )


def import_lerobot(module: str, folder: Path) -> ModuleType:
    """``lerobot.<module>``, or an error that says how to install LeRobot (or what it lacks)."""
    try:
        return importlib.import_module(f"lerobot.{module}")
    except ModuleNotFoundError as exc:
        kind = _policy_type(folder / CONFIG_FILE)
        if exc.name is not None and exc.name.split(".")[0] == "lerobot":
            what = "LeRobot, which is not installed in this Python"
        else:
            what = f"LeRobot and its dependency {exc.name!r}, which is not installed"
        raise LeRobotNotInstalledError(
            f"{folder} is a LeRobot checkpoint (config.json type {kind!r}); loading it needs "
            f"{what}: {INSTALL_HINT}"
        ) from None


def envactor_params(kind: str, fields: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """envactor params (features, action dim, H, s, n_obs_steps) of a LeRobot policy of type
    ``kind`` from its config ``fields`` (``config.json``'s form: features as ``{key: {type,
    shape}}``). Camera features become uint8 ``(H, W, C)``, everything normalizes as identity
    (the checkpoint's own processors normalize)."""
    if kind not in CHUNK_LENGTH:
        raise LeRobotCheckpointError(
            f"{folder}: LeRobot policy type {kind!r} is not supported by envactor (supported: "
            f"{', '.join(sorted(CHUNK_LENGTH))})"
        )
    feats: dict[str, dict[str, Any]] = {}
    for key, feat in dict(fields.get("input_features") or {}).items():
        ftype, shape = str(feat.get("type")), [int(n) for n in feat.get("shape", ())]
        if ftype in ("STATE", "ENV"):
            feats[key] = {"shape": shape, "dtype": "float32", "norm": "identity"}
        elif ftype == "VISUAL" and len(shape) == 3:
            c, h, w = shape  # LeRobot's (C, H, W) float; envactor carries uint8 (H, W, C)
            feats[key] = {"shape": [h, w, c], "dtype": "uint8", "norm": "identity"}
        else:
            raise LeRobotCheckpointError(
                f"{folder}: input feature {key!r} of type {ftype} shape {shape} is not supported "
                "(supported: STATE, ENV, VISUAL (C, H, W))"
            )
    action = dict(fields.get("output_features") or {}).get(ACTION_KEY)
    if not isinstance(action, Mapping) or len(action.get("shape", ())) != 1:
        raise LeRobotCheckpointError(
            f"{folder}: expected output feature {ACTION_KEY!r} of shape (A,), got "
            f"{fields.get('output_features')}"
        )
    return {
        "input_features": feats,
        "action_dim": int(action["shape"][0]),
        "action_norm": "identity",
        "horizon": int(fields[CHUNK_LENGTH[kind]]),
        "n_action_steps": int(fields["n_action_steps"]),
        "n_obs_steps": int(fields.get("n_obs_steps") or 1),
        "lerobot_type": kind,
        "source": str(folder),
    }


def processor_stats(folder: Path, key: str) -> dict[str, Any]:
    """The raw-unit stats (``min``, ``max``, ``mean``, ``std``, ``q01``, ``q99``) the checkpoint's
    postprocessor holds for feature ``key`` (``action``); empty when it holds none. Read from
    the files alone: LeRobot is not needed."""
    from safetensors.numpy import load_file

    try:
        pipeline = json.loads((folder / POSTPROCESSOR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for step in pipeline.get("steps", []) if isinstance(pipeline, dict) else []:
        state = step.get("state_file") if isinstance(step, dict) else None
        if not isinstance(state, str) or "normalizer" not in str(step.get("registry_name")):
            continue
        path = folder / Path(state).name
        if not path.is_file():
            continue
        for name, value in load_file(str(path)).items():
            feature, _, stat = name.rpartition(".")
            if feature == key and stat in ("min", "max", "mean", "std", "q01", "q99"):
                out.setdefault(stat, value.astype("float64"))
    return out


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes), without tensors."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """A summary of the LeRobot checkpoint at ``path`` read from its files alone (LeRobot not
    needed): what ``envactor info`` shows for an envactor checkpoint, in the same layout."""
    folder = lerobot_checkpoint_dir(path)
    if folder is None:
        raise LeRobotCheckpointError(f"{path}: not a LeRobot pretrained_model folder")
    kind = policy_type(folder)
    fields = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    params = envactor_params(kind, fields, folder)
    tensors = _safetensors_header(folder / MODEL_FILE)
    count = 0
    for t in tensors.values():
        n = 1
        for d in t.get("shape", ()):
            n *= int(d)
        count += n
    stats: set[str] = set()
    for f in sorted(folder.glob("policy_preprocessor_step_*.safetensors")):
        stats.update(name.rsplit(".", 1)[0] for name in _safetensors_header(f))
    return {
        "path": str(folder.resolve()),
        "policy": f"lerobot/{kind}",
        "components": {"model": {"type": kind, "parameters": count}},
        "input_features": params["input_features"],
        "params": {k: v for k, v in params.items() if k != "input_features"},
        "action": {"horizon": params["horizon"], "action_dim": params["action_dim"]},
        "stats_keys": sorted(stats),
        "meta": {"format": "lerobot", "lerobot_type": kind},
    }
