"""The policy YAML schema (pydantic v2, unknown keys forbidden)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

ComponentName = Annotated[str, StringConstraints(pattern=r"^[^.\s\[\]]+$")]
"""A component name: no dots, brackets or spaces (it becomes an ``nn.ModuleDict`` key)."""


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


class ComponentSpec(BaseModel):
    """One component: a registered block ``type`` plus its parameters (free-form here)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1)


class ModelSection(BaseModel):
    """``model:``: components from files (``component_config_paths``) and/or inline."""

    model_config = ConfigDict(extra="forbid")

    component_config_paths: dict[ComponentName, str] = Field(default_factory=dict)
    components: dict[ComponentName, ComponentSpec] = Field(default_factory=dict)

    _empty = field_validator("component_config_paths", "components", mode="before")(_none_is_empty)


class PolicySection(BaseModel):
    """``policy:``: the registered policy name and its parameters (the policy validates them)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    _empty = field_validator("params", mode="before")(_none_is_empty)


class PolicyFile(BaseModel):
    """A whole policy YAML after composition, overrides and interpolation."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSection = Field(default_factory=ModelSection)
    policy: PolicySection
    checkpoint: str | None = None

    _empty = field_validator("model", mode="before")(_none_is_empty)
