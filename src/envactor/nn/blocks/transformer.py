"""``transformer_encoder`` (sequence -> sequence) and ``chunk_transformer`` (features -> chunk)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from envactor.registry import COMPONENT_REGISTRY

from ._common import check_dropout, check_positive


def _check_heads(d_model: int, nhead: int) -> None:
    check_positive(d_model=d_model, nhead=nhead)
    if d_model % nhead:
        raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")


@COMPONENT_REGISTRY.register("transformer_encoder")
class TransformerEncoder(nn.Module):
    """Pre-norm (by default) transformer encoder with a LEARNED positional embedding.

    The positional embedding is a ``(max_len, d_model)`` parameter (normal init, std 0.02) added
    after the optional input projection; sequences longer than ``max_len`` are an error.

    Args:
        d_model: token width inside the encoder.
        nhead: attention heads (must divide ``d_model``).
        num_layers: encoder layers.
        dim_feedforward: hidden width of each layer's feed-forward part.
        dropout: dropout inside the layers.
        max_len: longest sequence accepted.
        input_dim: if set, a ``Linear(input_dim, d_model)`` projects the input first; if ``None``
            the input must already have ``d_model`` features.
        output_dim: if set, a ``Linear(d_model, output_dim)`` projects the output.
        norm_first: pre-norm layers (a final ``LayerNorm`` is added too) instead of post-norm.
        activation: feed-forward nonlinearity.
    """

    shapes: ClassVar[dict[str, str]] = {
        "x": "(B, T, input_dim or d_model), T <= max_len",
        "padding_mask": "(B, T) bool, True = ignore, optional",
        "return": "(B, T, output_dim or d_model)",
    }

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_layers: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        max_len: int = 512,
        input_dim: int | None = None,
        output_dim: int | None = None,
        norm_first: bool = True,
        activation: Literal["relu", "gelu"] = "gelu",
    ) -> None:
        super().__init__()
        _check_heads(d_model, nhead)
        check_positive(num_layers=num_layers, dim_feedforward=dim_feedforward, max_len=max_len)
        check_dropout(dropout)
        self.in_dim = d_model if input_dim is None else input_dim
        self.out_dim = d_model if output_dim is None else output_dim
        self.max_len = max_len
        self.input_proj = nn.Identity() if input_dim is None else nn.Linear(input_dim, d_model)
        self.pos_emb = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation=activation,
            batch_first=True,
            norm_first=norm_first,
        )
        self.encoder = nn.TransformerEncoder(
            layer,
            num_layers,
            norm=nn.LayerNorm(d_model) if norm_first else None,
            enable_nested_tensor=False,
        )
        self.output_proj = nn.Identity() if output_dim is None else nn.Linear(d_model, output_dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, input_dim or d_model) -> (B, T, output_dim or d_model)``."""
        if x.dim() != 3 or x.shape[-1] != self.in_dim or x.shape[1] > self.max_len:
            raise ValueError(
                f"transformer_encoder: expected x of shape (B, T<={self.max_len}, {self.in_dim}), "
                f"got {tuple(x.shape)}"
            )
        h = self.input_proj(x) + self.pos_emb[: x.shape[1]]
        h = self.encoder(h, src_key_padding_mask=padding_mask)
        out: torch.Tensor = self.output_proj(h)
        return out


@COMPONENT_REGISTRY.register("chunk_transformer")
class ChunkTransformer(nn.Module):
    """ACT-style decoder: ``horizon`` learned queries cross-attend to tokens made from ``cond``.

    ``cond`` is projected to ``num_cond_tokens`` memory tokens (plus a learned per-token
    embedding); the queries run through a pre-norm ``TransformerDecoder`` (self-attention among
    queries, cross-attention to the memory) and a final ``LayerNorm -> Linear`` gives one action
    per query.

    Args:
        action_dim: action features per step (``A``).
        horizon: steps per chunk (``H``), one learned query each.
        cond_dim: observation feature width.
        d_model, nhead, num_layers, dim_feedforward, dropout: decoder sizes.
        num_cond_tokens: memory tokens built from ``cond``.
    """

    shapes: ClassVar[dict[str, str]] = {"cond": "(B, cond_dim)", "return": "(B, H, A)"}

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int,
        d_model: int = 256,
        nhead: int = 8,
        num_layers: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_cond_tokens: int = 4,
    ) -> None:
        super().__init__()
        _check_heads(d_model, nhead)
        check_positive(
            action_dim=action_dim,
            horizon=horizon,
            cond_dim=cond_dim,
            num_layers=num_layers,
            dim_feedforward=dim_feedforward,
            num_cond_tokens=num_cond_tokens,
        )
        check_dropout(dropout)
        self.action_dim = action_dim
        self.horizon = horizon
        self.cond_dim = cond_dim
        self.num_cond_tokens = num_cond_tokens
        self.cond_proj = nn.Linear(cond_dim, num_cond_tokens * d_model)
        self.memory_emb = nn.Parameter(torch.randn(num_cond_tokens, d_model) * 0.02)
        self.queries = nn.Parameter(torch.randn(horizon, d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(d_model))
        self.head = nn.Linear(d_model, action_dim)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """``(B, cond_dim) -> (B, H, A)``."""
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(
                f"chunk_transformer: expected cond of shape (B, {self.cond_dim}), "
                f"got {tuple(cond.shape)}"
            )
        b = cond.shape[0]
        memory = self.cond_proj(cond).view(b, self.num_cond_tokens, -1) + self.memory_emb
        queries = self.queries.unsqueeze(0).expand(b, -1, -1)
        out: torch.Tensor = self.head(self.decoder(queries, memory))
        return out
