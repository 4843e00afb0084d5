"""``mlp``: a plain multilayer perceptron over the last axis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from envactor.registry import COMPONENT_REGISTRY

from ._common import Activation, check_dropout, check_positive, make_activation


@COMPONENT_REGISTRY.register("mlp")
class MLP(nn.Module):
    """``Linear -> [LayerNorm] -> activation -> [Dropout]`` per hidden layer, then ``Linear``.

    Args:
        in_dim: input features (last axis).
        out_dim: output features.
        hidden_dims: widths of the hidden layers; empty gives a single linear layer.
        activation: nonlinearity after each hidden layer.
        dropout: dropout probability after each hidden activation (0 disables it).
        layer_norm: put a ``LayerNorm`` before each hidden activation.
        final_activation: apply the activation to the output as well.
    """

    shapes: ClassVar[dict[str, str]] = {"x": "(..., in_dim)", "return": "(..., out_dim)"}

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int] = (256, 256),
        activation: Activation = "relu",
        dropout: float = 0.0,
        layer_norm: bool = False,
        final_activation: bool = False,
    ) -> None:
        super().__init__()
        check_positive(in_dim=in_dim, out_dim=out_dim)
        for i, width in enumerate(hidden_dims):
            check_positive(**{f"hidden_dims[{i}]": width})
        check_dropout(dropout)
        self.in_dim = in_dim
        self.out_dim = out_dim
        layers: list[nn.Module] = []
        width_in = in_dim
        for width in hidden_dims:
            layers.append(nn.Linear(width_in, width))
            if layer_norm:
                layers.append(nn.LayerNorm(width))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = width
        layers.append(nn.Linear(width_in, out_dim))
        if final_activation:
            layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_dim) -> (..., out_dim)``."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"mlp: expected input x of shape (..., {self.in_dim}), got {tuple(x.shape)}"
            )
        out: torch.Tensor = self.net(x)
        return out
