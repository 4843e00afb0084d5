"""Declared inputs and outputs of a policy, and the parameters every policy shares."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NormName = Literal["mean_std", "min_max", "quantile", "identity", "image"]

_ALLOWED_DTYPES = {"float32", "float64", "float16", "bfloat16", "uint8", "int64", "int32"}


class FeatureSpec(BaseModel):
    """One observation feature: its shape without the batch dim, dtype and normalization mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: tuple[int, ...]
    dtype: str = "float32"
    norm: NormName = "mean_std"

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
        return self

    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype of this feature (bfloat16 is carried as float32 in numpy)."""
        return np.dtype("float32" if self.dtype == "bfloat16" else self.dtype)


class PolicyParams(BaseModel):
    """Parameters every policy takes (``policy.params`` in YAML); subclasses add their own.

    ``horizon`` is H (actions per predicted chunk) and ``n_action_steps`` is s (actions executed
    before the next chunk takes over), in REFERENCE.md's notation.
    """

    model_config = ConfigDict(extra="forbid")

    input_features: dict[str, FeatureSpec]
    action_dim: int = Field(gt=0)
    action_norm: NormName = "mean_std"
    horizon: int = Field(default=8, gt=0)
    n_action_steps: int = Field(default=4, gt=0)
    ema_decay: float | None = Field(default=None, gt=0.0, lt=1.0)
    control_hz: float | None = Field(default=None, gt=0.0)

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
        return self
