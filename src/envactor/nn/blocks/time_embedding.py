"""``sinusoidal_time_embedding``: Fourier features of a scalar time (flow time ``tau``)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from envactor.registry import COMPONENT_REGISTRY

from ._common import check_positive


@COMPONENT_REGISTRY.register("sinusoidal_time_embedding")
class SinusoidalTimeEmbedding(nn.Module):
    """``[cos(s * tau * f_k), sin(s * tau * f_k)]`` with ``f_k = max_period ** (-k / half)``.

    ``half = dim // 2`` frequencies span ``1 .. 1/max_period``; an odd ``dim`` gets one zero
    column at the end. ``scale`` (``s``) stretches ``tau`` first, so ``tau`` in ``[0, 1]`` reaches
    the slow frequencies too. With ``hidden_dim`` set, an MLP ``Linear(dim, hidden_dim) -> SiLU ->
    Linear(hidden_dim, dim)`` maps the features (learned); without it the block has no weights.

    Args:
        dim: embedding size.
        max_period: the slowest period, in units of ``scale * tau``.
        scale: multiplier applied to ``tau`` before the Fourier features.
        hidden_dim: width of the optional MLP on top (``None``: no MLP).
    """

    shapes: ClassVar[dict[str, str]] = {"tau": "() or (B,)", "return": "(dim,) or (B, dim)"}

    def __init__(
        self,
        dim: int,
        max_period: float = 10000.0,
        scale: float = 1000.0,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_positive(dim=dim)
        if max_period <= 1.0:
            raise ValueError(f"max_period must be > 1, got {max_period}")
        self.dim = dim
        self.out_dim = dim
        self.scale = scale
        self.max_period = max_period
        self.mlp: nn.Module
        if hidden_dim is None:
            self.mlp = nn.Identity()
        else:
            check_positive(hidden_dim=hidden_dim)
            self.mlp = nn.Sequential(
                nn.Linear(dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim)
            )

    def forward(self, tau: torch.Tensor | float) -> torch.Tensor:
        """``tau`` of shape ``()`` (or a float) or ``(B,)`` -> ``(dim,)`` or ``(B, dim)``."""
        t = torch.as_tensor(tau)
        if t.dim() > 1:
            raise ValueError(
                f"sinusoidal_time_embedding: expected tau of shape () or (B,), got {tuple(t.shape)}"
            )
        param = next(self.mlp.parameters(), None)
        device = param.device if param is not None else t.device
        out_dtype = param.dtype if param is not None else torch.get_default_dtype()
        if param is None and t.is_floating_point():
            out_dtype = t.dtype
        # Features in float32 whatever the module dtype: bf16 cannot resolve sin(1000 * tau).
        half = self.dim // 2
        exponents = torch.arange(half, device=device, dtype=torch.float32) / max(half, 1)
        freqs = torch.exp(-math.log(self.max_period) * exponents)
        args = (self.scale * t.to(device=device, dtype=torch.float32)).unsqueeze(-1) * freqs
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        out: torch.Tensor = self.mlp(emb.to(out_dtype))
        return out
