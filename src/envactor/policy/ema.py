"""Exponential moving average of a policy's weights, swapped in place for acting.

The shadow holds one tensor per floating-point parameter/buffer. Acting with EMA enabled swaps
values (not storages) between the live tensors and the shadow, so ``data_ptr()`` of every live
tensor is unchanged (CUDA graphs and compiled code stay valid) and neither copy is lost.
"""

from __future__ import annotations

import torch
from torch import nn


class EmaShadow:
    """EMA weights of ``module``; ``holding`` says which copy the live tensors hold now."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._module = module
        self._names, self._live = self._tensors()
        self._shadow = [t.detach().clone() for t in self._live]
        self.holding = "train"  # which weights the live tensors hold: "train" or "ema"

    def _tensors(self) -> tuple[list[str], list[torch.Tensor]]:
        names, tensors = [], []
        for name, t in [*self._module.named_parameters(), *self._module.named_buffers()]:
            if t.is_floating_point():
                names.append(name)
                tensors.append(t)
        return names, tensors

    def refresh(self) -> None:
        """Re-read the live tensors (after ``.to()``) and move the shadow to match them."""
        self._names, self._live = self._tensors()
        self._shadow = [
            s.to(device=t.device, dtype=t.dtype) for s, t in zip(self._shadow, self._live)
        ]

    @torch.no_grad()
    def step(self) -> None:
        """One EMA update from the training weights: shadow <- decay * shadow + (1 - decay) * w."""
        self.use("train")
        torch._foreach_lerp_(self._shadow, [t.detach() for t in self._live], 1.0 - self.decay)

    @torch.no_grad()
    def use(self, which: str) -> None:
        """Make the live tensors hold ``which`` ("train" or "ema") weights, swapping in place."""
        if which == self.holding:
            return
        for live, shadow in zip(self._live, self._shadow):
            tmp = live.detach().clone()
            live.copy_(shadow)
            shadow.copy_(tmp)
        self.holding = which

    @torch.no_grad()
    def reset_to_live(self) -> None:
        """Set both copies to the live values (after loading weights from outside)."""
        for live, shadow in zip(self._live, self._shadow):
            shadow.copy_(live)
