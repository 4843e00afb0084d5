"""``load_policy_config``: a policy YAML composed, overridden, resolved and validated.

Component files named in ``model.component_config_paths`` are loaded (each may use
``defaults:`` and ``${...}``) and inlined under ``model.components.<name>`` before overrides on
``model.components...`` and interpolation, so ``model.components.encoder.dim=64`` overrides a
parameter of a component that came from a file, and a component file can refer to its own keys
(``${dim}``) or to any key of the policy config (``${policy.params.horizon}``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from envactor.config.compose import compose_raw
from envactor.config.errors import OVERRIDE, ConfigError, Location
from envactor.config.interpolate import resolve, resolve_at
from envactor.config.limits import ReadBudget
from envactor.config.loader import check_yaml_file, display_path, resolve_path
from envactor.config.overrides import Override, apply_overrides, parse_override
from envactor.config.paths import KeyPath, describe, format_path, plain_copy
from envactor.config.schema import PolicyFile
from envactor.config.tree import ComposedConfig
from envactor.config.validate import validate, validation_error

M = TypeVar("M", bound=BaseModel)

_COMPONENTS: KeyPath = ("model", "components")
_PATHS: KeyPath = ("model", "component_config_paths")


def _escape(value: Any) -> Any:
    """Write literal ``${`` as ``$${`` so a saved config loads back to the same strings."""
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, str):
        return value.replace("${", "$${")
    return value


@dataclass(eq=False)
class PolicyConfig:
    """A validated policy config.

    Two PolicyConfigs are equal when they describe the same policy: equal ``resolved_dict()``
    (file locations and ``checkpoint`` are not compared).
    """

    path: Path
    base_dir: Path
    policy_type: str
    params: dict[str, Any]
    components: dict[str, dict[str, Any]]
    component_sources: dict[str, Path | None]
    checkpoint: Path | None
    composed: ComposedConfig = field(repr=False)

    def resolved_dict(self) -> dict[str, Any]:
        """The config as a checkpoint stores it: components inlined, no paths, no ``${``."""
        return _escape(
            {
                "model": {"components": plain_copy(self.components)},
                "policy": {"type": self.policy_type, "params": plain_copy(self.params)},
            }
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolicyConfig):
            return NotImplemented
        return self.resolved_dict() == other.resolved_dict()

    __hash__ = None  # type: ignore[assignment]

    def validate_params(self, model: type[M]) -> M:
        """``policy.params`` validated by ``model``; errors name file, key and line."""
        return validate(self.composed, model, at="policy.params")

    def validate_component(self, name: str, model: type[M]) -> M:
        """``model.components.<name>`` (``type`` included) validated by ``model``."""
        return validate(self.composed, model, at=f"model.components.{name}")

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError at dotted ``key``, located through the source map."""
        return self.composed.error(key, message)


def params_error(
    cfg: PolicyConfig | ComposedConfig, exc: ValidationError, *, at: str = "policy.params"
) -> ConfigError:
    """A ValidationError raised validating the subtree at ``at`` as a located ConfigError."""
    composed = cfg.composed if isinstance(cfg, PolicyConfig) else cfg
    return validation_error(composed, exc, at=at)


def _base_of(loc: Location | None, fallback: Path) -> Path:
    """The directory a relative path written at ``loc`` is relative to (cwd for overrides)."""
    if loc is None:
        return fallback
    if loc.file == OVERRIDE:
        return Path.cwd()
    return Path(loc.file).parent


def _mapping_at(cfg: ComposedConfig, key: KeyPath, what: str) -> dict[str, Any]:
    value = cfg.get(key, None)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise cfg.error(key, f"expected a mapping of {what}, found {describe(value)}")
    return value


def _component_paths(cfg: ComposedConfig) -> dict[str, str]:
    _mapping_at(cfg, ("model",), "model sections")
    if cfg.get(_PATHS, None) is None:
        return {}
    value = resolve_at(cfg, _PATHS)
    if not isinstance(value, dict):
        raise cfg.error(_PATHS, f"expected a mapping of name -> YAML file, found {describe(value)}")
    for name, rel in value.items():
        if not isinstance(rel, str) or not rel.strip():
            raise cfg.error(
                (*_PATHS, str(name)), f"expected a YAML file path, found {describe(rel)}"
            )
    return {str(k): v for k, v in value.items()}


def _graft_components(
    cfg: ComposedConfig, paths: dict[str, str], root_dir: Path, budget: ReadBudget
) -> tuple[ComposedConfig, dict[str, Path | None]]:
    """Load each component file and inline it under ``model.components.<name>``."""
    inline = _mapping_at(cfg, _COMPONENTS, "name -> component config")
    sources: dict[str, Path | None] = {str(name): None for name in inline}
    for name in paths:
        if name in inline:
            here = cfg.sources.get(f"model.component_config_paths.{name}")
            raise cfg.error(
                (*_COMPONENTS, name),
                f"component {name!r} is given both inline and in model.component_config_paths"
                f"{f' ({here})' if here else ''}; keep one",
            )
    data = plain_copy(cfg.data)
    smap = dict(cfg.sources)
    files = list(cfg.files)
    if data.get("model") is None:
        data["model"] = {}
    comps = data["model"]
    if comps.get("components") is None:
        comps["components"] = {}
    for name, rel in paths.items():
        key = (*_PATHS, name)
        where = cfg.locate(key)
        target = _base_of(where, root_dir) / os.path.expanduser(rel)
        problem = check_yaml_file(target, rel)
        if problem is not None:
            raise cfg.error(key, f"component file: {problem}")
        comp = compose_raw(
            target,
            expected=(
                f"a mapping with 'type:' and the block's parameters (the config of component "
                f"{name!r}, named by {format_path(key)}{f' at {where}' if where else ''})"
            ),
            budget=budget,
        )
        comps["components"][name] = comp.data
        prefix = f"model.components.{name}"
        for k, loc in comp.sources.items():
            smap[f"{prefix}.{k}" if k else prefix] = loc
        files.extend(f for f in comp.files if f not in files)
        sources[name] = resolve_path(target, file=display_path(target))
    return replace(cfg, data=data, sources=smap, files=tuple(files)), sources


def load_policy_config(path: str | Path, overrides: Sequence[str] = ()) -> PolicyConfig:
    """Load and validate a policy YAML (see ``envactor.config`` for the format).

    Order: ``defaults`` composition; overrides not under ``model.components``; component files
    inlined; overrides under ``model.components`` (so they reach file components too);
    interpolation (``${x}`` inside a component looks in that component first); validation.
    """
    p = Path(path)
    real = resolve_path(p, file=display_path(p))
    root_dir = real.parent
    parsed: list[Override] = [parse_override(o) for o in overrides]
    on_components = [o for o in parsed if o.path[:2] == _COMPONENTS]
    budget = ReadBudget()
    cfg = compose_raw(p, budget=budget)
    cfg = apply_overrides(cfg, [o for o in parsed if o.path[:2] != _COMPONENTS])
    cfg, comp_sources = _graft_components(cfg, _component_paths(cfg), root_dir, budget)
    cfg = apply_overrides(cfg, on_components)
    names = _mapping_at(cfg, _COMPONENTS, "name -> component config")
    cfg = resolve(cfg, scopes=[(*_COMPONENTS, str(n)) for n in names])
    spec = validate(cfg, PolicyFile)

    if cfg.data.get("model") is None:
        cfg.data["model"] = {}
    cfg.data["model"]["components"] = cfg.data["model"].get("components") or {}
    cfg.data["policy"]["params"] = cfg.data["policy"].get("params") or {}
    checkpoint = None
    if spec.checkpoint is not None:
        target = _base_of(cfg.locate("checkpoint"), root_dir) / os.path.expanduser(spec.checkpoint)
        try:
            checkpoint = resolve_path(target)
        except ConfigError as e:
            raise cfg.error("checkpoint", e.message) from None
    components = plain_copy(cfg.data["model"]["components"])
    return PolicyConfig(
        path=real,
        base_dir=root_dir,
        policy_type=spec.policy.type,
        params=plain_copy(cfg.data["policy"]["params"]),
        components=components,
        component_sources={n: comp_sources.get(n) for n in components},
        checkpoint=checkpoint,
        composed=cfg,
    )
