"""Flow sampling with real-time-chunking guidance: Eq. 2 of the RTC paper (Black, Galliker,
Levine 2025, arXiv 2506.07339); docs/chunking.md, "Real-time chunking by guidance".

Notation (docs/chunking.md): a chunk is ``(B, H, A)``; flow time ``tau`` runs from 0 (noise)
to 1 (data). ``velocity_fn(x, tau)`` takes ``x`` of shape ``(B, H, A)`` and ``tau`` as a python
``float`` and returns the velocity ``v``, same shape. A model that wants a tensor time makes one
itself (``torch.full((x.shape[0],), tau, device=x.device)``); passing a float keeps this module free
of assumptions about the model's time embedding.

Euler integration with ``n`` steps: ``tau_k = k / n``, ``x <- x + v / n``. With a prefix ``Y`` (the
unexecuted remainder of the previous chunk, shifted to index 0 and padded to ``H`` by the caller)
and weights ``W`` (:func:`envactor.chunking.masks.prefix_weights`), each step uses

    x1_hat   = x + (1 - tau) v(x, tau)
    e        = diag(W) (Y - x1_hat)
    g        = (d x1_hat / d x)^T e = e + (1 - tau) J_v^T e      (jacobian="vjp")
    g        = e                                                (jacobian="identity")
    weight   = min(beta, (1 - tau) / (tau r2)),  r2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)
    v_guided = v + weight g                                     (weight = beta at tau = 0)

``"vjp"`` is a true vector-Jacobian product through ``velocity_fn`` (one backward pass per step);
``"identity"`` skips it, which is what an implementation computes when it evaluates ``v`` before
marking ``x`` as requiring grad.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
Jacobian = Literal["vjp", "identity"]
DEFAULT_MAX_GUIDANCE_WEIGHT = 5.0
"""beta, the guidance weight clip (the RTC paper's setting); every default in envactor is this."""
MAX_GUIDANCE_WEIGHT = 100.0
"""The largest beta anything in envactor accepts (20 times the default): the weight clips the
guidance step, and above the default the guided chunk soon overshoots the prefix by more at each
step (docs/chunking.md, "Guided RTC at d >= 3")."""

__all__ = [
    "DEFAULT_MAX_GUIDANCE_WEIGHT",
    "MAX_GUIDANCE_WEIGHT",
    "Jacobian",
    "VelocityFn",
    "euler_sample",
    "guidance_weight",
    "rtc_sample",
]


def _check_num_steps(num_steps: object) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise TypeError(
            f"num_steps must be an integer >= 1, got {type(num_steps).__name__} {num_steps!r}"
        )
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return int(num_steps)


def _check_noise(noise: object) -> torch.Tensor:
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor (B, H, A), got {type(noise).__name__}")
    if noise.ndim != 3 or not noise.is_floating_point():
        raise ValueError(
            f"noise must be a floating tensor of shape (B, H, A), got shape "
            f"{tuple(noise.shape)} dtype {noise.dtype}"
        )
    return noise


def _velocity(velocity_fn: VelocityFn, x: torch.Tensor, tau: float) -> torch.Tensor:
    v = velocity_fn(x, tau)
    if not isinstance(v, torch.Tensor) or v.shape != x.shape:
        found = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(
            f"velocity_fn(x, tau={tau}) must return a tensor shaped like x {tuple(x.shape)}, "
            f"got {found}"
        )
    return v.to(x.dtype)


def guidance_weight(tau: float, max_guidance_weight: float) -> float:
    """``min(beta, (1 - tau) / (tau r2))`` with ``r2 = (1-tau)^2 / (tau^2 + (1-tau)^2)``.

    Equals ``beta`` at ``tau = 0`` (the ratio is infinite there) and 0 at ``tau = 1``.
    """
    if tau <= 0.0:
        return float(max_guidance_weight)
    if tau >= 1.0:
        return 0.0
    r2 = (1.0 - tau) ** 2 / (tau**2 + (1.0 - tau) ** 2)
    return float(min(max_guidance_weight, (1.0 - tau) / (tau * r2)))


def euler_sample(
    velocity_fn: VelocityFn, noise: torch.Tensor, *, num_steps: int = 5
) -> torch.Tensor:
    """Plain flow sampling from ``noise`` (tau = 0) to data (tau = 1) with Euler steps.

    Runs under ``torch.no_grad()`` (inside an outer ``inference_mode`` it stays there).
    Returns a new tensor with the dtype and device of ``noise``.
    """
    n = _check_num_steps(num_steps)
    x = _check_noise(noise)
    with torch.no_grad():
        for k in range(n):
            x = torch.add(x, _velocity(velocity_fn, x, k / n), alpha=1.0 / n)
    return x


def _prepare_prefix(prefix: object, noise: torch.Tensor) -> torch.Tensor:
    B, H, A = noise.shape
    if isinstance(prefix, np.ndarray):
        prefix = torch.from_numpy(np.array(prefix, copy=True))
    if not isinstance(prefix, torch.Tensor):
        raise TypeError(f"prefix must be a tensor (B, H, A) or (H, A), got {type(prefix).__name__}")
    if tuple(prefix.shape) not in ((H, A), (B, H, A)):
        raise ValueError(
            f"prefix must have shape (H, A) = {(H, A)} or (B, H, A) = {(B, H, A)} like noise, got "
            f"{tuple(prefix.shape)}; pad the unexecuted remainder to H actions before calling"
        )
    return prefix.to(device=noise.device, dtype=noise.dtype).clone().expand(B, H, A)


def _prepare_weights(weights: object, noise: torch.Tensor) -> torch.Tensor:
    B, H, _ = noise.shape
    if weights is None:
        raise ValueError("weights (H,) or (B, H) are required when a prefix is given")
    if isinstance(weights, np.ndarray):
        weights = torch.from_numpy(np.array(weights, copy=True))
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights must be a tensor or ndarray, got {type(weights).__name__}")
    if tuple(weights.shape) not in ((H,), (B, H)):
        raise ValueError(
            f"weights must have shape (H,) = {(H,)} or (B, H) = {(B, H)} to match noise "
            f"{(B, H, noise.shape[2])}, got {tuple(weights.shape)}"
        )
    w = weights.to(device=noise.device, dtype=noise.dtype).clone()
    return w.expand(B, H).unsqueeze(-1)  # (B, H, 1), broadcast over A


def rtc_sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    prefix: torch.Tensor | np.ndarray | None,
    weights: torch.Tensor | np.ndarray | None,
    *,
    num_steps: int = 5,
    max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT,
    jacobian: Jacobian = "vjp",
) -> torch.Tensor:
    """Sample a chunk that continues ``prefix`` (real-time chunking by guidance).

    Args:
        velocity_fn: ``v = velocity_fn(x, tau)``, ``x`` (B, H, A), ``tau`` a python float in
            [0, 1). For ``"vjp"`` it must be differentiable in ``x``: it must not run under
            ``torch.no_grad()``/``inference_mode`` nor detach. Tensors it captures that were made
            under ``inference_mode`` (an observation embedding, say) cannot be saved for backward:
            make them under ``torch.no_grad()`` or clone them outside inference mode.
        noise: the starting point at tau = 0, (B, H, A).
        prefix: ``Y``, (B, H, A) or (H, A) broadcast over the batch, already padded to ``H``;
            ``None`` means plain :func:`euler_sample` (no gradient at all).
        weights: ``W``, (H,) or (B, H) per-sample (envs with different ``d``), torch or numpy.
        num_steps: Euler steps ``n`` (paper: 5).
        max_guidance_weight: ``beta`` in [0, 100] (paper: 5); 0 gives the unguided result.
        jacobian: ``"vjp"`` (true vector-Jacobian product) or ``"identity"`` (g = e).

    Works inside an outer ``torch.inference_mode()``: gradients are enabled locally, only with
    respect to ``x`` (no ``.grad`` is written to any parameter). Returns a detached tensor with
    the dtype and device of ``noise``.
    """
    n = _check_num_steps(num_steps)
    _check_noise(noise)
    beta = float(max_guidance_weight)
    if not 0.0 <= beta <= MAX_GUIDANCE_WEIGHT:
        raise ValueError(
            f"max_guidance_weight (beta) must be finite and in [0, {MAX_GUIDANCE_WEIGHT:g}], "
            f"got {beta}"
        )
    if jacobian not in ("vjp", "identity"):
        raise ValueError(f"jacobian must be 'vjp' or 'identity', got {jacobian!r}")
    if prefix is None:
        return euler_sample(velocity_fn, noise, num_steps=n)

    # Tensors made under inference_mode cannot enter autograd: copy everything out of it first.
    with torch.inference_mode(False):
        x = noise.clone()
        y = _prepare_prefix(prefix, noise)
        w = _prepare_weights(weights, noise)
        for k in range(n):
            tau = k / n
            v_guided = _guided_velocity(velocity_fn, x, tau, y, w, beta, jacobian)
            x = torch.add(x, v_guided, alpha=1.0 / n)
    return x


def _guided_velocity(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    tau: float,
    y: torch.Tensor,
    w: torch.Tensor,
    beta: float,
    jacobian: Jacobian,
) -> torch.Tensor:
    """``v + weight * g`` at one Euler step (see the module docstring); detached.

    Only ``v`` is recorded by autograd: ``g = e + (1 - tau) J_v^T e`` is assembled from one
    backward pass through ``velocity_fn``, with ``inputs=[x]`` so no parameter gets a ``.grad``.
    """
    vjp = jacobian == "vjp"
    with torch.enable_grad() if vjp else torch.no_grad():
        x_in = x.detach().requires_grad_(vjp)
        try:
            v = _velocity(velocity_fn, x_in, tau)
        except RuntimeError as err:
            if "nference tensor" in str(err):
                raise RuntimeError(
                    "rtc_sample: velocity_fn used a tensor created under torch.inference_mode() "
                    "in a differentiable op; create it under torch.no_grad() or .clone() it "
                    "outside inference mode before calling rtc_sample"
                ) from err
            raise
    if vjp and not v.requires_grad:
        raise RuntimeError(
            "rtc_sample(jacobian='vjp'): velocity_fn returned a tensor that does not depend on x "
            "through autograd (is it under torch.no_grad()/inference_mode, or detached?); the "
            "VJP would silently be the identity. Make velocity_fn differentiable or pass "
            "jacobian='identity' explicitly"
        )
    with torch.no_grad():
        v_val = v.detach()
        x1_hat = torch.add(x_in.detach(), v_val, alpha=1.0 - tau)
        e = w * (y - x1_hat)
    if vjp:
        (jt_e,) = torch.autograd.grad(v, [x_in], grad_outputs=e)
        with torch.no_grad():
            g = torch.add(e, jt_e, alpha=1.0 - tau)
    else:
        g = e
    with torch.no_grad():
        return torch.add(v_val, g, alpha=guidance_weight(tau, beta))
