"""Build ``nn.Module`` components from config mappings: ``{"type": <block>, **parameters}``.

Parameters are checked against the block's constructor signature before anything is built:
unknown names (with a did-you-mean), missing required ones, and values that do not match the
annotation (strict pydantic validation: ``"3"`` and ``true`` are not an ``int``, ``"abc"`` is not a
list, ``.inf`` and ``.nan`` are never accepted; a YAML list is accepted where a tuple is annotated)
all fail with one :class:`ComponentError` naming the component, its source file, the block type
and the accepted parameters.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError
from torch import nn

from envactor.registry import COMPONENT_REGISTRY, RegistryError

_EMPTY = inspect.Parameter.empty


class ComponentError(ValueError):
    """A component config that cannot be built: says what is wrong, where, and what is accepted."""


@dataclass(frozen=True)
class _Param:
    name: str
    annotation: Any  # ``Any`` when the constructor leaves it unannotated
    default: Any  # ``inspect.Parameter.empty`` when required

    @property
    def required(self) -> bool:
        return self.default is _EMPTY

    def describe(self) -> str:
        text = f"{self.name}: {_type_name(self.annotation)}"
        return text if self.required else f"{text} = {self.default!r}"


def build_component(
    cfg: Mapping[str, Any], *, name: str | None = None, source: str | Path | None = None
) -> nn.Module:
    """Build the block ``cfg["type"]`` with the other keys of ``cfg`` as constructor arguments.

    Args:
        cfg: ``{"type": <registered block name>, <parameter>: <value>, ...}``.
        name: the component's name in its policy (for error messages).
        source: the file ``cfg`` came from (for error messages).

    Raises:
        ComponentError: missing or unknown ``type``, bad parameters, or the block's own
            constructor refusing the values.
    """
    where = _where(name, source)
    if not isinstance(cfg, Mapping):
        raise ComponentError(
            f"{where}: expected a mapping with 'type' and the block's parameters, "
            f"got {type(cfg).__name__} {cfg!r}"
        )
    block_type = cfg.get("type")
    if not isinstance(block_type, str) or not block_type:
        found = "no 'type' key" if "type" not in cfg else f"type {block_type!r}"
        raise ComponentError(
            f"{where}: expected 'type' naming a block, found {found}; "
            f"known block types: {', '.join(known_block_types())}"
        )
    factory = _lookup(block_type, where)
    kwargs = _validate(factory, block_type, {k: v for k, v in cfg.items() if k != "type"}, where)
    try:
        module = factory(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ComponentError(f"{where}, type {block_type!r}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ComponentError(
            f"{where}, type {block_type!r}: the registered factory returned "
            f"{type(module).__name__}, expected a torch.nn.Module"
        )
    return module


def build_components(
    cfgs: Mapping[str, Mapping[str, Any]],
    sources: Mapping[str, Path | str | None] | None = None,
) -> nn.ModuleDict:
    """Build every ``name: cfg`` of ``cfgs`` into one ``nn.ModuleDict`` (same names, same order).

    ``sources[name]`` is the file each config came from, used in errors. Every component is
    tried; one :class:`ComponentError` then reports all that failed.
    """
    sources = sources or {}
    built = nn.ModuleDict()
    problems: list[str] = []
    for name, cfg in cfgs.items():
        source = sources.get(name)
        if not isinstance(name, str) or not name or "." in name:
            problems.append(
                f"{_where(str(name), source)}: a component name must be a non-empty string "
                f"without '.', got {name!r}"
            )
            continue
        try:
            module = build_component(cfg, name=name, source=source)
            built[name] = module
        except ComponentError as exc:
            problems.append(str(exc))
        except KeyError as exc:  # ModuleDict refuses names that shadow its attributes
            problems.append(
                f"{_where(name, source)}: cannot be used as a component name "
                f"({exc.args[0] if exc.args else exc})"
            )
    if problems:
        raise ComponentError("\n".join(problems))
    return built


def known_block_types() -> list[str]:
    """Names of every registered block type (built-ins and advertised plugins)."""
    importlib.import_module("envactor.nn.blocks")
    names: list[str] = COMPONENT_REGISTRY.names()
    return names


def describe_component(block_type: str) -> str:
    """A one-line signature of ``block_type``'s parameters, e.g. ``mlp(in_dim: int, ...)``."""
    params, var_kw = _signature(_lookup(block_type, "component"))
    parts = [p.describe() for p in params.values()] + (["**kwargs"] if var_kw else [])
    return f"{block_type}({', '.join(parts)})"


def _where(name: str | None, source: str | Path | None) -> str:
    text = "component" if name is None else f"component {name!r}"
    return text if source is None else f"{text} in {source}"


def _lookup(block_type: str, where: str) -> Callable[..., Any]:
    importlib.import_module("envactor.nn.blocks")  # registers the built-ins
    try:
        factory: Callable[..., Any] = COMPONENT_REGISTRY.get(block_type)
    except RegistryError:
        known = known_block_types()
        close = difflib.get_close_matches(block_type, known, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ComponentError(
            f"{where}: unknown block type {block_type!r}{hint}; "
            f"known block types: {', '.join(known)}"
        ) from None
    return factory


def _signature(factory: Callable[..., Any]) -> tuple[dict[str, _Param], bool]:
    """Keyword-passable parameters of ``factory`` and whether it takes ``**kwargs``."""
    sig = inspect.signature(factory)
    target = factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to what is there
        hints = {}
    params: dict[str, _Param] = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            ann = hints.get(p.name, p.annotation)
            if ann is _EMPTY or isinstance(ann, str):
                ann = Any
            params[p.name] = _Param(p.name, ann, p.default)
    return params, var_kw


def _validate(
    factory: Callable[..., Any], block_type: str, values: dict[Any, Any], where: str
) -> dict[str, Any]:
    """Type-checked keyword arguments for ``factory``, or one ComponentError with every problem."""
    params, var_kw = _signature(factory)
    problems: list[str] = []
    for key in values:
        if not isinstance(key, str):
            problems.append(f"parameter names must be strings, got {key!r}")
        elif key not in params and not var_kw:
            close = difflib.get_close_matches(key, list(params), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown parameter {key!r}{hint}")
    missing = [p.name for p in params.values() if p.required and p.name not in values]
    if missing:
        problems.append(f"missing required parameter(s) {', '.join(map(repr, missing))}")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            continue
        param = params.get(key)
        if param is None:
            kwargs[key] = value  # only reached with **kwargs
            continue
        bad = _non_finite(value)
        if bad is not None:
            problems.append(
                f"parameter {key!r}: expected a finite number, got {bad}; infinities and NaN "
                "are not valid parameters"
            )
            continue
        try:
            kwargs[key] = _check_type(param.annotation, value)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            problems.append(
                f"parameter {key!r}: expected {_type_name(param.annotation)}, "
                f"got {value!r} ({type(value).__name__}): {msg}"
            )
    if problems:
        accepted = ", ".join(p.describe() for p in params.values()) or "(none)"
        raise ComponentError(
            f"{where}, type {block_type!r}: {'; '.join(problems)}. "
            f"Accepted parameters of {block_type!r}: {accepted}"
        )
    return kwargs


def _check_type(annotation: Any, value: Any) -> Any:
    """``value`` validated strictly against ``annotation``; lists may stand in for tuples."""
    adapter = _adapter(annotation)
    if adapter is None:
        return value
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError:
        as_tuples = _lists_to_tuples(value)
        if as_tuples is value:
            raise
        try:
            return adapter.validate_python(as_tuples, strict=True)
        except ValidationError:
            pass
        raise


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    """A pydantic adapter for ``annotation``; ``None`` where pydantic cannot check it."""
    if annotation is Any:
        return None
    try:
        return TypeAdapter(
            annotation, config=ConfigDict(arbitrary_types_allowed=True, allow_inf_nan=False)
        )
    except Exception:  # a type pydantic cannot handle, or one that refuses a config
        try:
            return TypeAdapter(annotation)
        except Exception:
            return None


def _non_finite(value: Any) -> str | None:
    """``.inf``/``-.inf``/``.nan`` (as YAML writes it) if ``value`` holds such a float."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for v in value:
            found = _non_finite(v)
            if found is not None:
                return found
    return None


def _lists_to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def _type_name(annotation: Any) -> str:
    if annotation is Any:
        return "Any"
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b(?:typing|collections\.abc|builtins)\.", "", repr(annotation))
