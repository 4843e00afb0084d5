"""pydantic v2 validation whose errors name the file, the full dotted key path and the line."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from envactor.config.composed import ComposedConfig
from envactor.config.errors import ConfigError
from envactor.config.paths import KeyPath, Segment, child, did_you_mean, format_path, parse_path

M = TypeVar("M", bound=BaseModel)

_MISSING_TYPES = {"missing", "missing_argument", "missing_keyword_only_argument"}


def validate(cfg: ComposedConfig, model: type[M], *, at: str = "") -> M:
    """Validate ``cfg.data`` (or the subtree at dotted path ``at``) with ``model``.

    Every pydantic error becomes one line of a ConfigError: ``file:line: full.key.path: what``
    (for a missing key, the line of its parent mapping). Unknown keys are errors when the model
    says ``extra="forbid"``.
    """
    prefix = parse_path(at) if at else ()
    data = cfg.get(prefix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(cfg, exc, at=at, model=model) from None


def validation_error(
    cfg: ComposedConfig,
    exc: ValidationError,
    *,
    at: str = "",
    model: type[BaseModel] | None = None,
) -> ConfigError:
    """Turn ``exc`` (raised validating the subtree at ``at``) into a located ConfigError.

    ``model`` (the validated class) lets unknown-key errors list the allowed keys.
    """
    prefix = parse_path(at) if at else ()
    try:
        data = cfg.get(prefix)
    except ConfigError:
        data = None
    errors = [_one(cfg, prefix, data, dict(err), model) for err in exc.errors()]
    return ConfigError.combine(errors)


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _walk_loc(prefix: KeyPath, data: Any, loc: Sequence[Any], missing: bool) -> KeyPath:
    """The config key path an error location points at.

    Location parts not found in the data (union member names, ``[key]`` markers) are skipped,
    except the last part of a missing-key error, which is the missing key itself.
    """
    path: list[Segment] = list(prefix)
    node = data
    for i, part in enumerate(loc):
        if part == "[key]":
            break
        seg: Segment = part if isinstance(part, int) and isinstance(node, list) else str(part)
        try:
            canon, node = child(node, seg)
        except KeyError:
            if missing and i == len(loc) - 1:
                path.append(str(part))
            continue
        path.append(canon)
    return tuple(path)


def _one(
    cfg: ComposedConfig,
    prefix: KeyPath,
    data: Any,
    err: dict[str, Any],
    model: type[BaseModel] | None,
) -> ConfigError:
    kind = str(err.get("type", ""))
    path = _walk_loc(prefix, data, err.get("loc", ()), kind in _MISSING_TYPES)
    if kind in _MISSING_TYPES:
        message = "required key is missing"
    elif kind == "extra_forbidden" and path:
        name = str(path[-1])
        allowed = _allowed_keys(model, path[len(prefix) : -1]) if model is not None else None
        message = f"unknown key {name!r}"
        if allowed:
            message += f"{did_you_mean(name, allowed)}; allowed keys: {', '.join(allowed)}"
    else:
        message = f"{err.get('msg', 'invalid value')} (got {_got(err.get('input'))})"
    return ConfigError.at(cfg.locate(path), format_path(path) or None, message)


def _model_in(tp: Any) -> type[BaseModel] | None:
    """The BaseModel class inside ``tp`` (through Optional, unions and Annotated), if any."""
    if get_origin(tp) is Annotated:
        return _model_in(get_args(tp)[0])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        for arg in get_args(tp):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _allowed_keys(model: type[BaseModel], segments: KeyPath) -> list[str] | None:
    """The keys the model allows at ``segments`` (relative to the validated subtree)."""
    tp: Any = model
    for seg in segments:
        cls = _model_in(tp)
        if cls is not None:
            field = next((f for n, f in cls.model_fields.items() if (f.alias or n) == seg), None)
            if field is None:
                return None
            tp = field.annotation
            continue
        while get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        origin, args = get_origin(tp), get_args(tp)
        if origin in (dict, Mapping) and len(args) == 2:
            tp = args[1]
        elif origin in (list, tuple, Sequence) and args:
            tp = args[0]
        else:
            return None
    cls = _model_in(tp)
    if cls is None:
        return None
    return [f.alias or n for n, f in cls.model_fields.items()]
