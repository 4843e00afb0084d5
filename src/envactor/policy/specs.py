"""Declared inputs and outputs of a policy, and the parameters every policy shares.

Built from Python or from a config, these models are strict about numbers: a boolean is not a
number (``horizon=True`` is an error, not 1) and infinities and NaN are never valid values.
Strings that spell a number still convert (a config's ``${env:NAME}`` gives strings).
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

NormName = Literal["mean_std", "min_max", "quantile", "identity", "image"]

_ALLOWED_DTYPES = {"float32", "float64", "float16", "bfloat16", "uint8", "int64", "int32"}


def _members(tp: Any) -> list[Any]:
    """The members of a union (through ``Annotated``), or ``[tp]``."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [tp]


def _is_number_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, int | float) and tp is not bool


def _takes_bool(tp: Any) -> bool:
    if get_origin(tp) is Literal:
        return any(isinstance(a, bool) for a in get_args(tp))
    return tp is bool or tp is Any or tp is object


def _item_types(members: list[Any], index: int) -> list[Any]:
    """The annotations item ``index`` of a list or tuple typed ``members`` may have."""
    out: list[Any] = []
    for tp in members:
        origin, args = get_origin(tp), get_args(tp)
        homogeneous = origin is tuple and len(args) == 2 and args[1] is Ellipsis
        if (origin is list and args) or homogeneous:
            out.append(args[0])
        elif origin is tuple and index < len(args):
            out.append(args[index])
    return out


def _bool_for_number(
    members: list[Any], value: Any, where: str = ""
) -> tuple[str, list[Any], bool] | None:
    """Where in ``value`` a boolean stands for a number (``""``: ``value`` itself, ``"[1]"``: its
    item 1), the types wanted there and the boolean, or None when there is none."""
    if isinstance(value, bool):
        numeric = any(_is_number_type(m) for m in members) and not any(map(_takes_bool, members))
        return (where, members, value) if numeric else None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            inner = [m for tp in _item_types(members, i) for m in _members(tp)]
            found = _bool_for_number(inner, item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


class StrictNumbers(BaseModel):
    """Base of models whose number fields refuse booleans (also inside lists and tuples) and
    whose float fields refuse infinities and NaN; inherited by every subclass's fields."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        found = _bool_for_number(_members(cls.model_fields[info.field_name].annotation), value)
        if found is not None:
            where, wanted, flag = found
            ints = all(issubclass(m, int) for m in wanted if _is_number_type(m))
            item = f" at {where}" if where else ""
            raise ValueError(
                f"expected {'an integer' if ints else 'a number'}{item}, got the boolean {flag}; "
                "booleans are not numbers (write 1 or 0 if a number is meant)"
            )
        return value


def _check_names(names: tuple[str, ...] | None, size: int, what: str) -> None:
    if names is None:
        return
    if len(names) != size:
        raise ValueError(f"{what}: expected {size} names (one per entry), got {len(names)}")
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"{what}: expected distinct non-empty names, got {list(names)}")


class FeatureSpec(StrictNumbers):
    """One observation feature: its shape without the batch dim, dtype and normalization mode.

    ``names`` optionally names the entries of a 1-D feature in order (the dataset's names,
    e.g. the motors of ``observation.state``); a robot that gives the feature is checked
    against them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    shape: tuple[int, ...]
    dtype: str = "float32"
    norm: NormName = "mean_std"
    names: tuple[str, ...] | None = None

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(n <= 0 for n in v):
            raise ValueError(f"every dimension must be positive, got {list(v)}")
        return v

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        if v not in _ALLOWED_DTYPES:
            raise ValueError(f"expected one of {sorted(_ALLOWED_DTYPES)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _image_is_uint8(self) -> FeatureSpec:
        if self.norm == "image" and self.dtype != "uint8":
            raise ValueError(f"norm 'image' expects dtype uint8, got {self.dtype!r}")
        if self.names is not None:
            if len(self.shape) != 1:
                raise ValueError(f"names are for 1-D features, this one has shape {self.shape}")
            _check_names(self.names, self.shape[0], "names")
        return self

    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype of this feature (bfloat16 is carried as float32 in numpy)."""
        return np.dtype("float32" if self.dtype == "bfloat16" else self.dtype)


class PolicyParams(StrictNumbers):
    """Parameters every policy takes (``policy.params`` in YAML); subclasses add their own.

    ``horizon`` is H (actions per predicted chunk) and ``n_action_steps`` is s (actions executed
    before the next chunk takes over), as in docs/chunking.md. ``n_obs_steps`` is how many of
    each env's latest observations the policy reads (1: the current one; above 1 its hooks see
    ``(B, n_obs_steps, ...)``, oldest first, and training windows carry that history).
    Subclasses inherit the strict numbers of :class:`StrictNumbers`: no booleans for numbers,
    no infinities or NaN.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    input_features: dict[str, FeatureSpec]
    action_dim: int = Field(gt=0)
    action_norm: NormName = "mean_std"
    horizon: int = Field(default=8, gt=0)
    n_action_steps: int = Field(default=4, gt=0)
    n_obs_steps: int = Field(default=1, gt=0)
    ema_decay: float | None = Field(default=None, gt=0.0, lt=1.0)
    control_hz: float | None = Field(default=None, gt=0.0)
    action_names: tuple[str, ...] | None = None

    def require_raw_units(
        self, who: str, key: str, io: tuple[int, int], reads: str, writes: str
    ) -> None:
        """For scripted controllers in raw units: feature ``key`` of shape ``(io[0],)`` with norm
        identity, ``io[1]`` identity-normalized action dims; ``reads``/``writes`` name them."""
        state_dim, action_dim = io
        spec = self.input_features.get(key)
        if spec is None or spec.shape != (state_dim,) or spec.norm != "identity":
            raise ValueError(
                f"{who} reads {reads}: input feature {key!r} must have shape [{state_dim}] and "
                f"norm 'identity', got {spec}"
            )
        if self.action_dim != action_dim or self.action_norm != "identity":
            raise ValueError(
                f"{who} outputs {writes}: action_dim must be {action_dim} and action_norm "
                f"'identity', got {self.action_dim} and {self.action_norm!r}"
            )

    @model_validator(mode="after")
    def _steps_within_horizon(self) -> PolicyParams:
        if self.n_action_steps > self.horizon:
            raise ValueError(
                f"n_action_steps (s={self.n_action_steps}) must be <= horizon (H={self.horizon})"
            )
        if not self.input_features:
            raise ValueError("input_features must declare at least one observation key")
        _check_names(self.action_names, self.action_dim, "action_names")
        return self
