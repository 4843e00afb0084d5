"""pydantic v2 validation whose errors name the file, the full dotted key path and the line."""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from envactor.config.errors import ConfigError
from envactor.config.paths import KeyPath, Segment, child, did_you_mean, format_path, parse_path
from envactor.config.tree import ComposedConfig

M = TypeVar("M", bound=BaseModel)

_MISSING_TYPES = {"missing", "missing_argument", "missing_keyword_only_argument"}


def validate(cfg: ComposedConfig, model: type[M], *, at: str = "") -> M:
    """Validate ``cfg.data`` (or the subtree at dotted path ``at``) with ``model``.

    Every pydantic error becomes one line of a ConfigError: ``file:line: full.key.path: what``
    (for a missing key, the line of its parent mapping). Unknown keys are errors when the model
    says ``extra="forbid"``. Stricter than pydantic's lax mode: a boolean is refused where the
    model wants a number (``horizon: true`` is not 1), and infinities and NaN are refused
    everywhere (``.inf``, ``.nan``, ``1e999``, or an env value ``inf``).
    """
    prefix = parse_path(at) if at else ()
    data = cfg.get(prefix)
    problems: list[tuple[KeyPath, str]] = []
    _check_input(model, data, prefix, problems)
    if problems:
        raise _combine(cfg, problems)
    try:
        out = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(cfg, exc, at=at, model=model) from None
    _check_output(out, data, prefix, problems)
    if problems:
        raise _combine(cfg, problems)
    return out


# ------------------------------------------------------------- booleans and non-finite numbers
#
# pydantic's lax mode reads ``true`` as 1 for an int field and accepts ``.inf`` / ``.nan`` for a
# float one. Neither is ever meant in a config, so both are refused (before pydantic runs, so a
# bool read as 1 cannot surface as a confusing error elsewhere). Strings from ``${env:...}``
# still convert to numbers; one that converts to inf or nan is refused after validation.

_NUMBER_TYPES = (int, float, Decimal, Fraction, complex)
_NONE_TYPE = type(None)


def _combine(cfg: ComposedConfig, problems: list[tuple[KeyPath, str]]) -> ConfigError:
    errors = [ConfigError.at(cfg.locate(p), format_path(p) or None, m) for p, m in problems]
    return ConfigError.combine(errors)


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    """The members of a union (``None`` left out), or ``[tp]``."""
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [m for a in get_args(tp) if a is not _NONE_TYPE for m in _members(a)]
    return [tp]


def _bool_kind(tp: Any) -> str:
    """How a bool fares at ``tp``: kept (``"bool"``), read as a number (``"number"``) or other."""
    if tp is Any or tp is object or tp is bool:
        return "bool"
    if get_origin(tp) is Literal:
        return "bool" if any(isinstance(a, bool) for a in get_args(tp)) else "other"
    if isinstance(tp, type) and issubclass(tp, _NUMBER_TYPES):
        return "number"
    return "other"


def _number_word(members: list[Any]) -> str:
    ints = all(
        isinstance(m, type) and issubclass(m, int) for m in members if _bool_kind(m) != "other"
    )
    return "an integer" if ints else "a number"


def _yaml_float(value: float) -> str:
    return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")


def _check_input(tp: Any, value: Any, path: KeyPath, out: list[tuple[KeyPath, str]]) -> None:
    """Collect bools where ``tp`` wants a number, and non-finite floats anywhere in ``value``."""
    members = _members(tp)
    if isinstance(value, bool):
        kinds = {_bool_kind(m) for m in members}
        if "number" in kinds and "bool" not in kinds:
            out.append(
                (
                    path,
                    f"expected {_number_word(members)}, got the boolean {str(value).lower()}; "
                    "booleans are not numbers here (write 1 or 0 if a number is meant)",
                )
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            out.append(
                (
                    path,
                    f"expected a finite number, got {_yaml_float(value)}; infinities and NaN are "
                    "not valid config values",
                )
            )
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_input(_item_type(members, str(k)), v, (*path, str(k)), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_input(_item_type(members, i), v, (*path, i), out)


def _item_type(members: list[Any], key: Segment) -> Any:
    """The annotation of item ``key`` of a container typed ``members`` (``Any`` when unclear)."""
    found: list[Any] = []
    for tp in members:
        origin, args = get_origin(tp), get_args(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(key, str):
            field = next(
                (f for n, f in tp.model_fields.items() if key in (n, f.alias)),
                None,
            )
            if field is not None:
                found.append(field.annotation)
        elif origin in (dict, Mapping) and len(args) == 2:
            found.append(args[1])
        elif origin in (list, Sequence, set, frozenset) and args:
            found.append(args[0])
        elif origin is tuple and args:
            if len(args) == 2 and args[1] is Ellipsis:
                found.append(args[0])
            elif isinstance(key, int) and key < len(args):
                found.append(args[key])
    if not found:
        return Any
    return found[0] if len(found) == 1 else Union[tuple(found)]  # noqa: UP007


def _check_output(value: Any, given: Any, path: KeyPath, out: list[tuple[KeyPath, str]]) -> None:
    """Collect non-finite floats the config supplied as text (``${env:X}`` with X=inf)."""
    if isinstance(value, float):
        if isinstance(given, str) and not math.isfinite(value):
            out.append(
                (
                    path,
                    f"expected a finite number, got {_short(given)!r} (read as "
                    f"{_yaml_float(value)}); infinities and NaN are not valid config values",
                )
            )
        return
    if not isinstance(given, dict | list):
        return
    if isinstance(value, BaseModel):
        for name, field in type(value).model_fields.items():
            for key in (field.alias, name):
                if isinstance(given, dict) and key is not None and key in given:
                    _check_output(getattr(value, name), given[key], (*path, key), out)
                    break
    elif isinstance(value, dict) and isinstance(given, dict):
        for k, v in value.items():
            if k in given:
                _check_output(v, given[k], (*path, str(k)), out)
    elif isinstance(value, list | tuple) and isinstance(given, list):
        for i, (v, g) in enumerate(zip(value, given, strict=False)):
            _check_output(v, g, (*path, i), out)


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


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
    elif kind == "finite_number":
        message = (
            f"expected a finite number, got {_got(err.get('input'))}; infinities and NaN are "
            "not valid config values"
        )
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
