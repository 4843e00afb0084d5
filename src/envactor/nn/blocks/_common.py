"""Helpers shared by the blocks: activation names and argument checks."""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

Activation = Literal["relu", "gelu", "silu", "tanh", "mish"]
"""Activation names accepted by every block's ``activation`` parameter."""

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "mish": nn.Mish,
}
assert set(_ACTIVATIONS) == set(get_args(Activation))


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`Activation`)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"activation must be one of {', '.join(_ACTIVATIONS)}, got {name!r}"
        ) from None


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming each argument that is not a positive integer."""
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value}")


def check_dropout(p: float) -> None:
    """Raise ``ValueError`` unless ``0 <= p < 1``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
