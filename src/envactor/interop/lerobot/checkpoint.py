"""Recognizing a LeRobot ``pretrained_model`` folder, and importing LeRobot with a clear error."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
PRETRAINED_DIR = "pretrained_model"

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
