"""Training-time real-time chunking for the flow policy (Black et al. 2025, arXiv 2512.05964).

Training: per example a delay ``d`` is drawn uniformly from ``{0, ..., max_delay}``; the first
``d`` actions of the chunk are given clean (per-token flow time 1) and the loss covers only the
rest. Inference: the committed actions overwrite the prefix after every Euler step, so the
network only ever sees the prefix clean, as in training. No vector-Jacobian product and no extra
network evaluation: the cost is that of plain sampling.

The network has to know which tokens are clean: ``flow_prefix_velocity_mlp`` is
``flow_velocity_mlp`` with the per-token flow time appended to each action as one more input
channel (``token_tau``, (B, H)); without ``token_tau`` every token takes the global ``tau``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from envactor.nn.blocks import Activation
from envactor.nn.blocks.flow import FlowVelocityMLP
from envactor.registry import COMPONENT_REGISTRY


@COMPONENT_REGISTRY.register("flow_prefix_velocity_mlp")
class FlowPrefixVelocityMLP(FlowVelocityMLP):
    """``flow_velocity_mlp`` that also reads each token's flow time (training-time RTC).

    Same arguments as ``flow_velocity_mlp``; the input projection reads ``H * (A + 1)``
    features: the chunk and, per token, its flow time (1 for a clean committed action).
    """

    token_time = True
    label = "flow_prefix_velocity_mlp"

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
        super().__init__(horizon, action_dim, cond_dim, hidden_dims, time_dim, activation, dropout)
        self.input_proj = torch.nn.Linear(horizon * (action_dim + 1), hidden_dims[0])

    def forward(
        self,
        x: torch.Tensor,
        tau: torch.Tensor | float,
        cond: torch.Tensor | None = None,
        token_tau: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As ``flow_velocity_mlp``; ``token_tau`` (B, H) per-token flow time (default: tau)."""
        b, t = self._batch_and_time(x, tau)
        if token_tau is None:
            token_tau = t[:, None].expand(b, self.horizon)
        elif tuple(token_tau.shape) != (b, self.horizon):
            raise ValueError(
                f"{self.label}: expected token_tau of shape ({b}, {self.horizon}), "
                f"got {tuple(token_tau.shape)}"
            )
        flat = torch.cat([x, token_tau.to(x.dtype)[..., None]], dim=-1).flatten(1)
        return self._trunk(flat, self._film(t, cond, b))


def prefix_mask(delays: torch.Tensor, horizon: int) -> torch.Tensor:
    """(B, H) bool, True at ``i < delays[b]``: the committed (clean) tokens."""
    return torch.arange(horizon, device=delays.device)[None, :] < delays[:, None]


def sample_delays(n: int, max_delay: int, device: torch.device) -> torch.Tensor:
    """(n,) delays drawn uniformly from ``{0, ..., max_delay}`` (global torch RNG)."""
    return torch.randint(0, max_delay + 1, (n,)).to(device)
