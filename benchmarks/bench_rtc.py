"""Cost of real-time-chunking guidance vs plain flow sampling (docs/chunking.md: RTC, Eq. 2).

Times, per call, on one small flow velocity network (an MLP over the flattened (H, A) chunk plus
a sinusoidal tau embedding), under an outer ``torch.inference_mode()`` as a policy would run it:

- ``euler``: :func:`euler_sample` (unguided),
- ``rtc-vjp``: :func:`rtc_sample` with the true vector-Jacobian product (one backward per step),
- ``rtc-identity``: :func:`rtc_sample` with the identity shortcut (no backward pass).

Target: rtc-vjp / euler <= 2.0 (the RTC paper measured 2.5 for a guided step on its robot).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_rtc.py [--device cuda] [--batch 1 16]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from envactor.chunking.guidance import euler_sample, rtc_sample
from envactor.chunking.masks import prefix_weights_torch


class FlowMLP(nn.Module):
    """Velocity field v(x, tau) for chunks (B, H, A): MLP over [flatten(x), embed(tau)]."""

    def __init__(self, H: int, A: int, hidden: int, depth: int, t_dim: int = 64) -> None:
        super().__init__()
        self.t_dim = t_dim
        layers: list[nn.Module] = [nn.Linear(H * A + t_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, H * A))
        self.net = nn.Sequential(*layers)

    def embed(self, tau: float, B: int, like: torch.Tensor) -> torch.Tensor:
        half = self.t_dim // 2
        freqs = torch.exp(
            -math.log(1000.0) * torch.arange(half, device=like.device, dtype=like.dtype) / half
        )
        angles = tau * 100.0 * freqs
        return torch.cat([angles.sin(), angles.cos()]).expand(B, self.t_dim)

    def forward(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        B = x.shape[0]
        h = torch.cat([x.flatten(1), self.embed(tau, B, x)], dim=1)
        return self.net(h).view(x.shape)


def _time_ms(
    fns: dict[str, Callable[[], torch.Tensor]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Median wall time per call in ms of each function, calls interleaved round-robin so a
    change in machine load hits all of them alike (after warm-up; synchronizing on CUDA)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        for _ in range(max(3, repeats // 5)):
            fn()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def _bench_row(
    model: FlowMLP,
    B: int,
    H: int,
    A: int,
    W: torch.Tensor,
    n: int,
    device: torch.device,
    repeats: int,
) -> dict[str, float]:
    """Times of the three samplers for batch ``B``, inside ``inference_mode`` like a policy."""
    with torch.inference_mode():
        noise = torch.randn(B, H, A, device=device)
        Y = torch.randn(B, H, A, device=device)
        return _time_ms(
            {
                "euler": lambda: euler_sample(model, noise, num_steps=n),
                "vjp": lambda: rtc_sample(model, noise, Y, W, num_steps=n),
                "identity": lambda: rtc_sample(
                    model, noise, Y, W, num_steps=n, jacobian="identity"
                ),
            },
            device,
            repeats,
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="B values")
    p.add_argument("--H", type=int, default=16, help="prediction horizon")
    p.add_argument("--A", type=int, default=4, help="action dimension")
    p.add_argument("--hidden", type=int, default=1024, help="MLP width")
    p.add_argument("--depth", type=int, default=3, help="hidden layers")
    p.add_argument("--steps", type=int, default=5, help="Euler steps n")
    p.add_argument("--d", type=int, default=3, help="inference delay d for the prefix weights")
    p.add_argument("--s", type=int, default=8, help="execution horizon s")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per row")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = p.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = FlowMLP(args.H, args.A, args.hidden, args.depth).to(device).eval()
    n_params = sum(q.numel() for q in model.parameters())
    W = prefix_weights_torch(args.d, args.s, args.H, device=device)
    print(
        f"device={device} params={n_params / 1e6:.2f}M H={args.H} A={args.A} "
        f"steps={args.steps} d={args.d} s={args.s} threads={torch.get_num_threads()}"
    )
    print(
        f"{'B':>4} {'euler ms':>10} {'rtc-vjp ms':>11} {'ratio':>6} {'rtc-id ms':>10} {'ratio':>6}"
    )
    for B in args.batch:
        times = _bench_row(model, B, args.H, args.A, W, args.steps, device, args.repeats)
        t_eu, t_vjp, t_id = times["euler"], times["vjp"], times["identity"]
        print(
            f"{B:>4} {t_eu:>10.3f} {t_vjp:>11.3f} {t_vjp / t_eu:>6.2f} "
            f"{t_id:>10.3f} {t_id / t_eu:>6.2f}"
        )
    assert all(q.grad is None for q in model.parameters()), "guidance wrote .grad to the model"


if __name__ == "__main__":
    main()
