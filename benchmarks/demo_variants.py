"""The demo's pipeline with one thing changed: the checkpoints behind the variant rows of
docs/chunking.md's "Guided RTC at d >= 3", each with its own small table.

Every variant runs ``envactor demo``'s phases with its settings (200 perturbed expert episodes,
3000 training steps, env torque noise 0.1, 64 episodes per cell, evaluation seed 10000) except
what it names:

- ``50hz-h16``: ``envactor/PendulumSwingUp50-v0`` with the chunk doubled to H = 16 (s = 8 for
  sync), so that d = 3 is about a fifth of the chunk as in the RTC paper's real-robot setting
  (H = 50, d about 5) rather than the 20 Hz demo's three eighths. A control step is 20 ms, so
  the delays go up to d = 8 (160 ms, the 20 Hz demo's d = 3.2), training-time RTC too;
- ``no-prefix``: the 20 Hz demo trained without training-time RTC (``train_max_delay = 0``): a
  plain flow model, every training example a full chunk, for guided RTC to guide.

Writes ``runs/demo-<variant>/`` like the demo writes ``runs/demo/``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/demo_variants.py 50hz-h16
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from envactor.demo import DemoSettings, run_demo

VARIANTS: dict[str, dict[str, Any]] = {
    "50hz-h16": dict(
        task="envactor/PendulumSwingUp50-v0",
        horizon=16,
        n_action_steps=8,
        executors=("sync", "naive_async", "rtc", "rtc_trained"),
        delays=(0, 1, 2, 3, 4, 5, 6, 7, 8),
        train_max_delay=8,
    ),
    "no-prefix": dict(train_max_delay=0, executors=("naive_async", "rtc")),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("variant", choices=sorted(VARIANTS))
    p.add_argument("--out", default=None, help="default: runs/demo-<variant>")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out or f"runs/demo-{args.variant}")
    run_demo(DemoSettings(out=out, **VARIANTS[args.variant]))


if __name__ == "__main__":
    main()
