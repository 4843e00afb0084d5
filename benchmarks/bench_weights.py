"""In-place weight loading throughput: ``load_state_dict_into`` vs a bare ``copy_`` loop.

A stack of square Linear layers (~100M float32 parameters by default) is loaded from a CPU state
dict of the same shapes, once with ``envactor.weights.load_state_dict_into`` (name matching,
shape checks, casts) and once with ``for t, s in zip(targets, sources): t.copy_(s)``. Prints the
best-of-N GB/s of each and their ratio (target: >= 0.8). Runs on CPU, and on CUDA from a pinned
source when a GPU is present.

    python benchmarks/bench_weights.py --params 100_000_000 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from envactor.weights import load_state_dict_into, pin_state_dict


def build(params: int, width: int) -> nn.Sequential:
    layers = max(1, round(params / (width * width + width)))
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])


def best_seconds(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(device: torch.device, params: int, width: int, repeats: int) -> float:
    with torch.device("cpu"):
        source_module = build(params, width)
    sd = {k: v.detach() for k, v in source_module.state_dict().items()}
    del source_module
    if device.type == "cuda":
        sd = pin_state_dict(sd)
    target = build(params, width).to(device)
    targets = [target.state_dict(keep_vars=True)[k] for k in sd]
    sources = list(sd.values())
    nbytes = sum(t.numel() * t.element_size() for t in targets)

    def loader() -> None:
        load_state_dict_into(target, sd)

    def plain() -> None:
        with torch.no_grad():
            for t, s in zip(targets, sources):
                t.copy_(s)

    loader()
    plain()  # warm up allocator, page-in, CUDA context
    t_loader = t_plain = float("inf")
    for _ in range(2):  # interleave so drift hits both
        t_loader = min(t_loader, best_seconds(loader, repeats, device))
        t_plain = min(t_plain, best_seconds(plain, repeats, device))
    for t, s in zip(targets, sources):
        assert torch.equal(t.detach().cpu(), s)
    gb = nbytes / 1e9
    ratio = t_plain / t_loader
    print(
        f"{device.type:>4}: {sum(s.numel() for s in sources) / 1e6:.1f}M params, {gb:.2f} GB | "
        f"load_state_dict_into {gb / t_loader:6.2f} GB/s ({t_loader * 1e3:7.1f} ms) | "
        f"plain copy_ loop {gb / t_plain:6.2f} GB/s ({t_plain * 1e3:7.1f} ms) | "
        f"ratio {ratio:.3f} (target >= 0.8)"
    )
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", type=int, default=100_000_000, help="approximate parameter count")
    p.add_argument("--width", type=int, default=2048, help="Linear layer width")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per round (best kept)")
    args = p.parse_args()
    run(torch.device("cpu"), args.params, args.width, args.repeats)
    if torch.cuda.is_available():
        run(torch.device("cuda"), args.params, args.width, args.repeats)


if __name__ == "__main__":
    main()
