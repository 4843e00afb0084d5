"""``demo_velocity``: demo_flow's velocity network, a component block."""

from __future__ import annotations

import torch
from torch import nn

from envactor import COMPONENT_REGISTRY


@COMPONENT_REGISTRY.register("demo_velocity")
class DemoVelocity(nn.Module):
    """``v(x, token_tau, cond)``: an MLP over the chunk x (B, H, A), each action's own flow time
    token_tau (B, H) and the observation embedding cond (B, cond_dim); returns (B, H, A)."""

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.shape = (horizon, action_dim)
        self.net = nn.Sequential(
            nn.Linear(horizon * (action_dim + 1) + cond_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, horizon * action_dim),
        )

    def forward(self, x: torch.Tensor, token_tau: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([x, token_tau[..., None].to(x.dtype)], dim=-1).flatten(1)
        return self.net(torch.cat([tokens, cond], dim=-1)).view(-1, *self.shape)
