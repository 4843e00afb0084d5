"""``flow_velocity_mlp``: a conditional velocity field for flow matching on action chunks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from envactor.registry import COMPONENT_REGISTRY

from ._common import Activation, check_dropout, check_positive, make_activation
from .time_embedding import SinusoidalTimeEmbedding


class FiLMResidualBlock(nn.Module):
    """``h -> skip(h) + Linear(drop(act(FiLM(Linear(LayerNorm(h)), c))))``.

    FiLM is ``u * (1 + gamma(c)) + beta(c)``; with PyTorch's default init ``gamma, beta`` start
    small but nonzero, so the output depends on ``c`` and on ``h`` from the first step.
    """

    def __init__(
        self, width_in: int, width_out: int, cond_width: int, activation: str, dropout: float
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width_in)
        self.fc1 = nn.Linear(width_in, width_out)
        self.film = nn.Linear(cond_width, 2 * width_out)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width_out, width_out)
        self.skip = nn.Identity() if width_in == width_out else nn.Linear(width_in, width_out)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(c).chunk(2, dim=-1)
        u = self.fc1(self.norm(h)) * (1.0 + gamma) + beta
        out: torch.Tensor = self.skip(h) + self.fc2(self.drop(self.act(u)))
        return out


@COMPONENT_REGISTRY.register("flow_velocity_mlp")
class FlowVelocityMLP(nn.Module):
    """Velocity ``v(x, tau, cond)`` of a flow from noise (``tau = 0``) to chunks (``tau = 1``).

    The flattened chunk is projected to ``hidden_dims[0]`` and passed through one FiLM residual
    block per entry of ``hidden_dims`` (pre-LayerNorm, so the map stays well scaled for the
    vector-Jacobian products of guided sampling); the FiLM signal is ``act(Linear([time_emb(tau),
    cond]))``. A final ``LayerNorm -> Linear`` gives ``(B, H, A)``. No layer is zero-initialised:
    guidance needs a non-trivial Jacobian ``dv/dx`` from the start.

    Args:
        horizon: chunk length ``H``.
        action_dim: action features ``A``.
        cond_dim: observation feature width (0: unconditional, ``cond`` may be ``None``).
        hidden_dims: width of each residual block.
        time_dim: size of the sinusoidal flow-time embedding (with its own MLP).
        activation: nonlinearity inside the blocks and on the conditioning signal.
        dropout: dropout inside each block.
    """

    label: ClassVar[str] = "flow_velocity_mlp"  # the registered name, for error messages
    shapes: ClassVar[dict[str, str]] = {
        "x": "(B, H, A) noisy chunk",
        "tau": "() or (B,) flow time, 0 = noise, 1 = data",
        "cond": "(B, cond_dim) or None when cond_dim == 0",
        "return": "(B, H, A) velocity",
    }

    def __init__(
        self,
        horizon: int,
        action_dim: int,
        cond_dim: int,
        hidden_dims: Sequence[int] = (512, 512, 512),
        time_dim: int = 128,
        activation: Activation = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive(horizon=horizon, action_dim=action_dim, time_dim=time_dim)
        if cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0, got {cond_dim}")
        if not hidden_dims:
            raise ValueError("hidden_dims must list at least one block width, got []")
        for i, width in enumerate(hidden_dims):
            check_positive(**{f"hidden_dims[{i}]": width})
        check_dropout(dropout)
        self.horizon = horizon
        self.action_dim = action_dim
        self.cond_dim = cond_dim
        cond_width = hidden_dims[0]
        self.time_emb = SinusoidalTimeEmbedding(time_dim, hidden_dim=2 * time_dim)
        self.cond_net = nn.Sequential(
            nn.Linear(time_dim + cond_dim, cond_width), make_activation(activation)
        )
        self.input_proj = nn.Linear(horizon * action_dim, hidden_dims[0])
        widths = [hidden_dims[0], *hidden_dims]
        self.blocks = nn.ModuleList(
            FiLMResidualBlock(w_in, w_out, cond_width, activation, dropout)
            for w_in, w_out in itertools.pairwise(widths)
        )
        self.out_norm = nn.LayerNorm(widths[-1])
        self.out_proj = nn.Linear(widths[-1], horizon * action_dim)

    def forward(
        self, x: torch.Tensor, tau: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x (B, H, A)``, ``tau () | (B,)``, ``cond (B, cond_dim)`` -> velocity ``(B, H, A)``."""
        b, t = self._batch_and_time(x, tau)
        return self._trunk(x.reshape(b, -1), self._film(t, cond, b))

    def _batch_and_time(self, x: torch.Tensor, tau: torch.Tensor | float) -> tuple[int, Tensor]:
        """Check ``x``; ``tau`` as a ``(B,)`` tensor."""
        name = self.label
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.horizon, self.action_dim):
            raise ValueError(
                f"{name}: expected x of shape (B, {self.horizon}, {self.action_dim}), "
                f"got {tuple(x.shape)}"
            )
        b = x.shape[0]
        t = torch.as_tensor(tau, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        if tuple(t.shape) != (b,):
            raise ValueError(f"{name}: expected tau of shape () or ({b},), got {tuple(t.shape)}")
        return b, t

    def _film(self, t: Tensor, cond: Tensor | None, b: int) -> Tensor:
        """The FiLM signal ``act(Linear([time_emb(tau), cond]))`` ``(B, width)``."""
        name = self.label
        parts = [self.time_emb(t)]
        if self.cond_dim:
            if cond is None or tuple(cond.shape) != (b, self.cond_dim):
                found = None if cond is None else tuple(cond.shape)
                raise ValueError(
                    f"{name}: expected cond of shape ({b}, {self.cond_dim}), got {found}"
                )
            parts.append(cond.to(parts[0].dtype))
        elif cond is not None and cond.numel():
            raise ValueError(
                f"{name}: built with cond_dim=0, expected cond None, got shape {tuple(cond.shape)}"
            )
        c: Tensor = self.cond_net(torch.cat(parts, dim=-1))
        return c

    def _trunk(self, flat: Tensor, c: Tensor) -> Tensor:
        """Flattened input ``(B, in)`` and FiLM signal -> velocity ``(B, H, A)``."""
        h = self.input_proj(flat)
        for block in self.blocks:
            h = block(h, c)
        out: Tensor = self.out_proj(self.out_norm(h))
        return out.view(flat.shape[0], self.horizon, self.action_dim)
