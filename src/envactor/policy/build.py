"""Build a policy from YAML or a checkpoint directory, and save one as a checkpoint.

YAML --load_policy_config--> components (nn factory) + Normalizer (checkpoint) --> Policy class

A LeRobot ``pretrained_model`` folder builds a ``LeRobotPolicy`` (``envactor.interop.lerobot``):
LeRobot's own model and processors, LeRobot imported only then.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from envactor.checkpoint import (
    load_checkpoint,
    load_components_strict,
    refers_to_checkpoint,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from envactor.config import load_policy_config, validate
from envactor.nn import build_components
from envactor.policy.base import Policy
from envactor.registry import POLICY_REGISTRY, RegistryError

POLICY_YAML = "policy.yaml"
META_JSON = "meta.json"


def packaged_config(name: str) -> Path:
    """The default YAML shipped with policy ``name`` (``policies/<name>/configs/policy.yaml``)."""
    cls = POLICY_REGISTRY.get(name)
    module = __import__(cls.__module__, fromlist=["__file__"])
    base = Path(module.__file__ or "").parent
    for cand in (base / "configs" / POLICY_YAML, base / "configs" / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"policy {name!r} ships no configs/{POLICY_YAML} next to {base}")


def resolve_source(path_or_dir: str | Path) -> tuple[Path, Path | None]:
    """(YAML file, checkpoint dir or None) for a YAML path, a checkpoint dir or a policy name.

    A directory is always a checkpoint, resolved like ``load_checkpoint`` resolves it (a training
    step directory or ``checkpoints/last`` means that step's policy; a save interrupted between
    its renames is recovered); one without a valid ``meta.json`` is an error, never a policy
    with untrained weights.
    """
    p = Path(path_or_dir)
    if refers_to_checkpoint(p):
        ckpt = resolve_checkpoint_dir(p)
        return ckpt / POLICY_YAML, ckpt
    if p.is_file():
        return p, None
    if isinstance(path_or_dir, str) and path_or_dir.isidentifier():
        try:
            return packaged_config(path_or_dir), None
        except RegistryError:
            pass
    raise FileNotFoundError(
        f"no policy YAML, checkpoint directory or registered policy name at {str(path_or_dir)!r}"
    )


def build_policy(
    path_or_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    overrides: Sequence[str] = (),
) -> Policy:
    """YAML file, checkpoint directory, LeRobot checkpoint or registered name -> a ready policy on
    ``device``.

    ``checkpoint`` (or the YAML's ``checkpoint:`` key, or the directory itself when it is a
    checkpoint) supplies weights, normalizer stats and the weight version; loading is strict.
    ``overrides`` are dotted ``key=value`` strings applied on top of the YAML. A LeRobot
    ``pretrained_model`` folder (``config.json`` with a ``type``, ``model.safetensors`` and the
    saved processors) is loaded with LeRobot itself; it takes neither ``checkpoint`` nor
    ``overrides``.
    """
    from envactor.interop.lerobot import lerobot_checkpoint_dir, load_lerobot_policy

    if lerobot_checkpoint_dir(path_or_dir) is not None:
        if checkpoint is not None or overrides:
            given = "checkpoint=" if checkpoint is not None else f"--override {' '.join(overrides)}"
            raise ValueError(
                f"{path_or_dir} is a LeRobot checkpoint: its config.json fixes the policy, so "
                f"{given} cannot apply (edit config.json or load it with LeRobot)"
            )
        return load_lerobot_policy(path_or_dir, device=device)
    yaml_file, ckpt_dir = resolve_source(path_or_dir)
    # a checkpoint is checked (meta.json, checksums) before its policy.yaml is parsed
    own = load_checkpoint(ckpt_dir) if ckpt_dir is not None and checkpoint is None else None
    cfg = load_policy_config(yaml_file, overrides)
    try:
        cls = POLICY_REGISTRY.get(cfg.policy_type)
    except RegistryError as exc:
        raise cfg.error("policy.type", str(exc)) from None
    params = validate(cfg.composed, cls.Params, at="policy.params")
    components = build_components(cfg.components, cfg.component_sources)
    ckpt_path = Path(checkpoint) if checkpoint is not None else (cfg.checkpoint or ckpt_dir)
    normalizer = None
    meta: dict[str, Any] = {}
    if ckpt_path is not None:
        if own is not None and Path(ckpt_path) == own.path:
            ckpt = own
        else:
            ckpt = load_checkpoint(ckpt_path)
        load_components_strict(ckpt, dict(components.items()))
        normalizer = ckpt.normalizer
        meta = ckpt.meta
    policy = cls(components, normalizer, **params.model_dump())
    policy.config = cfg.resolved_dict()
    policy.weight_version = int(meta.get("weight_version", 0))
    return policy.to(device)


def save_policy(
    policy: Policy, path: str | Path, *, step: int = 0, extra_meta: dict[str, Any] | None = None
) -> Path:
    """Write ``policy`` (acting weights, stats, resolved config) as a checkpoint directory."""
    if policy.name == "lerobot":
        raise ValueError(
            f"a LeRobot policy is saved in LeRobot's format, not as an envactor checkpoint: "
            f"policy.components['model'].save_pretrained(DIR) plus its preprocessor and "
            f"postprocessor's save_pretrained(DIR) (loaded from {policy.config.get('lerobot')})"
        )
    if not policy.config:
        raise ValueError(
            f"policy {policy.name!r} has no resolved config; build it with build_policy() "
            "or set policy.config to the dict it was built from"
        )
    return save_checkpoint(
        path,
        config=policy.config,
        components=policy.acting_state_dict(),
        normalizer=policy.normalizer,
        step=step,
        weight_version=policy.weight_version,
        extra_meta=extra_meta,
    )
