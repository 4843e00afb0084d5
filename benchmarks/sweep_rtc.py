"""Why guided RTC fails at large d: measured sweeps on a trained checkpoint (docs/chunking.md,
"Guided RTC at d >= 3").

Every cell runs the demo's evaluation (episode j seeded ``seed + j``, env torque noise, the
vector actor) with an executor instrumented to record, at every replan that continues a
remainder (delay d > 0), numbers in action units:

- ``prefix_mean`` / ``prefix_max``: |new_i - Y_i| over the frozen prefix i < d, the new chunk
  as the policy returned it, before execution replaces those actions with the remainder's;
- ``seam``: |new_d - Y_d|, new plan against old plan at the step where the new chunk takes over
  (where the remainder still has that action); ``jump``: |new_d - Y_(d-1)|, the executed step
  change at the switch;
- ``tail_ref`` (``--reference``): |new_i - ref_i| over the executed part d <= i < d + s against a
  prefix-consistent sample ``ref`` (the same checkpoint's training-time RTC on the same
  observation and remainder), and ``tail_plain``: the same for an unconditioned sample, and
  ``tail_self``: between two prefix-consistent samples (the spread of the distribution itself);
- ``max_abs``, ``nonfinite``: the largest |action| a chunk held and how many chunks had NaN/inf;
- ``success``, ``jerk``: the evaluation's own metrics.

Grids: ``guidance`` (rtc: d x beta x Euler steps x schedule, s = max(d, 1)), ``horizon``
(executors x every admissible s, d <= s <= H - d, at the given delays) and ``executors``
(executors at s = max(d, 1); ``bid`` once per N in ``--bid-samples`` and weak checkpoint in
``--weak``, ``none`` for coherence only). Results are appended to
a JSON-lines file as each cell finishes; a re-run skips the cells already there (resumable).
``--table`` prints the file as markdown tables.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/sweep_rtc.py \
        --ckpt runs/demo-before/policy --out runs/sweeps/guidance20.jsonl --grid guidance
    .venv/bin/python benchmarks/sweep_rtc.py --out runs/sweeps/guidance20.jsonl --table
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envactor import build_policy
from envactor.chunking.request import GuidanceRequest
from envactor.policy.base import Policy
from envactor.policy.guard import action_bounds
from envactor.policy.modes import stack_observations
from envactor.runtime.actor import VectorActor
from envactor.runtime.evaluate import make_vector_env
from envactor.runtime.executors import EXECUTORS, ChunkExecutor, EnvState


class Probe:
    """Per-cell accumulators of the replan statistics."""

    def __init__(self) -> None:
        self.prefix: list[float] = []
        self.prefix_max = 0.0
        self.seam: list[float] = []
        self.jump: list[float] = []
        self.tail_ref: list[float] = []
        self.tail_plain: list[float] = []
        self.tail_self: list[float] = []
        self.max_abs = 0.0
        self.nonfinite = 0
        self.out_of_range = 0
        self.bounds: tuple[np.ndarray, np.ndarray] | None = None
        self.chunks = 0

    def summary(self) -> dict[str, float | int | None]:
        def mean(xs: list[float]) -> float | None:
            return float(np.mean(xs)) if xs else None

        return {
            "prefix_mean": mean(self.prefix), "prefix_max": self.prefix_max if self.prefix
            else None, "seam": mean(self.seam), "jump": mean(self.jump),
            "tail_ref": mean(self.tail_ref), "tail_plain": mean(self.tail_plain),
            "tail_self": mean(self.tail_self), "max_abs": self.max_abs,
            "nonfinite": self.nonfinite, "out_of_range": self.out_of_range,
            "chunks": self.chunks,
        }  # fmt: skip


def probed(cls: type[ChunkExecutor], probe: Probe, reference: Policy | None) -> Any:
    """``cls`` with its batched request recorded into ``probe``."""

    class Probed(cls):  # type: ignore[misc, valid-type]
        def _request(
            self,
            env_ids: list[Any],
            obs: Mapping[Any, Mapping[str, Any]],
            states: Mapping[Any, EnvState],
        ) -> np.ndarray:
            rests = [self._remainder(states[e]) for e in env_ids]
            last = [states[e].last_action for e in env_ids]
            chunks = super()._request(env_ids, obs, states)
            self._record(env_ids, obs, states, rests, last, np.asarray(chunks))
            return chunks

        def _record(self, env_ids, obs, states, rests, last, chunks):  # type: ignore[no-untyped-def]
            probe.chunks += len(chunks)
            finite = np.isfinite(chunks).reshape(len(chunks), -1).all(axis=1)
            probe.nonfinite += int((~finite).sum())
            if probe.bounds is not None:  # the guard's range (envactor.policy.guard), in units
                lo, hi = probe.bounds
                outside = ((chunks < lo) | (chunks > hi)).reshape(len(chunks), -1).any(axis=1)
                probe.out_of_range += int((outside | ~finite).sum())
            if finite.any():
                probe.max_abs = max(probe.max_abs, float(np.abs(chunks[finite]).max()))
            d, s = self.delay, self.s
            rows = [b for b in range(len(chunks)) if len(rests[b]) and finite[b]]
            for b in rows:
                y, new = rests[b], chunks[b]
                if 0 < d <= len(y):
                    err = np.abs(new[:d] - y[:d])
                    probe.prefix.append(float(err.mean()))
                    probe.prefix_max = max(probe.prefix_max, float(err.max()))
                if d < len(y):
                    probe.seam.append(float(np.abs(new[d] - y[d]).mean()))
                before = y[d - 1] if 0 < d <= len(y) else last[b]
                if before is not None and d < self.horizon:
                    probe.jump.append(float(np.abs(new[d] - before).mean()))
            if reference is None or not rows:
                return
            _ids, batch = stack_observations({env_ids[b]: obs[env_ids[b]] for b in rows},
                                            list(self.policy.input_features))  # fmt: skip
            req = GuidanceRequest.build([rests[b] for b in rows], d, horizon=self.horizon,
                                        method="prefix")  # fmt: skip
            ref = reference.guided_inference(batch, request=req)
            ref2 = reference.guided_inference(batch, request=req)
            plain = reference.predict(batch)
            end = min(d + s, self.horizon)
            for j, b in enumerate(rows):
                new = chunks[b]
                probe.tail_ref.append(float(np.abs(new[d:end] - ref[j, d:end]).mean()))
                probe.tail_plain.append(float(np.abs(plain[j, d:end] - ref[j, d:end]).mean()))
                probe.tail_self.append(float(np.abs(ref2[j, d:end] - ref[j, d:end]).mean()))

    Probed.name = cls.name
    return Probed


def run_cell(
    policy: Policy,
    executor: str,
    delay: int,
    s: int,
    args: argparse.Namespace,
    reference: Policy | None,
    **executor_kwargs: Any,
) -> dict[str, Any]:
    """One evaluation with the probe; the row of the results file."""
    probe = Probe()
    norm = policy.normalizer
    if norm is not None:
        bounds = action_bounds(norm, "action", torch.device("cpu"), torch.float64)
        if bounds is not None:
            lo, hi = (norm.unnormalize("action", b.numpy()) for b in bounds)
            probe.bounds = (np.asarray(lo), np.asarray(hi))
    fallbacks = policy.guidance_fallbacks
    cls = probed(EXECUTORS.get(executor), probe, reference)
    ex = cls(policy, delay=delay, n_action_steps=s, **executor_kwargs)
    envs = make_vector_env(args.task, min(args.num_envs, args.episodes),
                           action_noise_std=args.noise)  # fmt: skip
    t0 = time.perf_counter()
    try:
        eps = VectorActor(policy, ex).run(envs, args.episodes, seed=args.seed)
    except Exception as exc:  # e.g. --no-guard: a NaN action reached the env and broke it
        return {"success": None, "error": f"{type(exc).__name__}: {exc}",
                "wall_s": round(time.perf_counter() - t0, 2), "guard": not args.no_guard,
                **probe.summary()}  # fmt: skip
    finally:
        envs.close()
    succ = [m.success for m in eps if m.success is not None]
    return {
        "success": float(np.mean(succ)), "jerk": float(np.mean([m.jerk for m in eps])),
        "return": float(np.mean([m.episode_return for m in eps])), "episodes": len(eps),
        "wall_s": round(time.perf_counter() - t0, 2), "guard": not args.no_guard,
        "fallbacks": policy.guidance_fallbacks - fallbacks, **probe.summary(),
    }  # fmt: skip


def cells(args: argparse.Namespace, horizon: int) -> list[dict[str, Any]]:
    """The grid's cells as keys (what identifies a row of the results file)."""
    out: list[dict[str, Any]] = []
    if args.grid == "guidance":
        for d, beta, n, sched in itertools.product(
            args.delays, args.betas, args.steps, args.schedules
        ):
            out.append({"executor": "rtc", "d": d, "s": max(d, 1), "beta": beta, "steps": n,
                        "schedule": sched})  # fmt: skip
    else:
        for ex, d in itertools.product(args.executors, args.delays):
            horizons = range(max(d, 1), horizon - d + 1) if args.grid == "horizon" else [max(d, 1)]
            for s in horizons:
                base = {"executor": ex, "d": d, "s": s, "beta": args.betas[0],
                        "steps": args.steps[0], "schedule": args.schedules[0]}  # fmt: skip
                if ex != "bid":
                    out.append(base)
                    continue
                weaks = [None if w == "none" else w for w in args.weak or ["none"]]
                for n, weak in itertools.product(args.bid_samples, weaks):
                    out.append({**base, "samples": n, "weak": weak})
    return out


KEYS = ("executor", "d", "s", "beta", "steps", "schedule", "samples", "weak")


def key_of(cell: Mapping[str, Any]) -> str:
    return json.dumps({k: cell.get(k) for k in KEYS}, sort_keys=True)


def sweep(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {key_of(json.loads(line)) for line in out.read_text().splitlines() if line}
    policies: dict[int, Policy] = {}
    reference = build_policy(args.ckpt) if args.reference else None
    if reference is not None:
        torch.manual_seed(args.seed)
    probe_policy = build_policy(args.ckpt)
    todo = [c for c in cells(args, probe_policy.params.horizon) if key_of(c) not in done]
    if args.left_range_in:  # only the cells whose chunks left the range in that (raw) run
        lines = Path(args.left_range_in).read_text().splitlines()
        left = {key_of(r) for r in map(json.loads, filter(None, lines)) if r.get("out_of_range")}
        todo = [c for c in todo if key_of(c) in left]
    print(f"{len(todo)} cells to run ({len(done)} already in {out})", flush=True)
    for cell in todo:
        n = cell["steps"]
        if n not in policies:
            policies[n] = build_policy(args.ckpt, overrides=[f"policy.params.num_steps={n}"])
        kwargs: dict[str, Any] = {}
        if EXECUTORS.get(cell["executor"]).method is not None:
            kwargs = {"schedule": cell["schedule"], "max_guidance_weight": cell["beta"]}
        if cell["executor"] == "bid":
            kwargs["num_samples"] = cell["samples"]
            kwargs["mode_size"] = min(args.mode_size, cell["samples"])
            if cell["weak"]:
                kwargs["weak"] = cell["weak"]
        row = {**cell, **run_cell(policies[n], cell["executor"], cell["d"], cell["s"], args,
                                  reference, **kwargs)}  # fmt: skip
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 10**-digits):
            return f"{v:.1e}"
        return f"{v:.{digits}f}"
    return str(v)


def pivot(path: Path, metric: str) -> None:
    """``metric`` as a markdown table: a row per setting, a column per d (``a,b``: both)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    delays = sorted({r["d"] for r in rows})
    ident = ("executor", "samples", "weak", "s", "beta", "steps", "schedule")
    varying = [k for k in ident if len({str(r.get(k)) for r in rows}) > 1 and k != "s"]
    if "s" in varying or len({(r["d"], r["s"]) for r in rows}) > len(delays):
        varying.append("s")
    groups: dict[tuple[Any, ...], dict[int, Any]] = {}
    for r in rows:  # "a,b": both, as "a / b"
        value = " / ".join(fmt(r.get(m)) for m in metric.split(","))
        groups.setdefault(tuple(r.get(k) for k in varying), {})[r["d"]] = value
    print("| " + " | ".join(varying + [f"d={d}" for d in delays]) + " |")
    print("| " + " | ".join("---" for _ in varying + delays) + " |")
    for key, by_d in groups.items():
        cells = [fmt(v) for v in key] + [fmt(by_d.get(d)) for d in delays]
        print("| " + " | ".join(cells) + " |")


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    for r in rows:
        if r.get("weak"):
            w = Path(r["weak"])
            r["weak"] = w.parent.name if w.name == "policy" else w.name  # the step folder
    cols = ["executor", "samples", "weak", "d", "s", "beta", "steps", "schedule", "success",
            "prefix_mean",
            "prefix_max", "seam", "jump", "tail_ref", "tail_plain", "tail_self", "max_abs",
            "nonfinite", "out_of_range", "fallbacks", "jerk"]  # fmt: skip
    cols = [c for c in cols if any(r.get(c) is not None for r in rows)]
    print("| " + " | ".join(cols) + " |")
    print("| " + " | ".join("---" for _ in cols) + " |")
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--ckpt", default="runs/demo/policy", help="the checkpoint to measure")
    p.add_argument("--out", required=True, help="JSON-lines results file (appended, resumable)")
    p.add_argument(
        "--grid",
        choices=["guidance", "horizon", "executors"],
        default="guidance",
        help="executors: --executors at s = max(d, 1)",
    )
    p.add_argument("--task", default="envactor/PendulumSwingUp-v0")
    p.add_argument("--delays", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--betas",
        type=float,
        nargs="+",
        default=None,
        help="guidance grid default: 1 5 20 100; others: 5 (the default beta)",
    )
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--schedules", nargs="+", default=["exp", "ones", "zeros"])
    p.add_argument("--executors", nargs="+", default=["naive_async", "rtc", "rtc_trained"])
    p.add_argument(
        "--weak",
        nargs="+",
        default=None,
        help="bid's weak checkpoints, one cell each (none: coherence only, the default)",
    )
    p.add_argument("--bid-samples", type=int, nargs="+", default=[8], help="bid's N values")
    p.add_argument("--mode-size", type=int, default=3, help="bid's K")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--seed", type=int, default=10_000, help="the demo's evaluation seed")
    p.add_argument("--noise", type=float, default=0.1, help="env torque noise (the demo's)")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also compare each chunk with prefix-consistent samples (tail_*)",
    )
    p.add_argument(
        "--left-range-in",
        default=None,
        metavar="FILE",
        help="run only the cells with out_of_range > 0 in FILE (a --no-guard run)",
    )
    p.add_argument(
        "--no-guard",
        action="store_true",
        help="guided chunks unchecked, as before the guard (they may explode)",
    )
    p.add_argument("--table", action="store_true", help="print --out as markdown and exit")
    p.add_argument(
        "--pivot",
        default=None,
        metavar="METRIC",
        help="print METRIC of --out as markdown, a column per d, and exit",
    )
    args = p.parse_args(argv)
    if args.betas is None:
        args.betas = [1.0, 5.0, 20.0, 100.0] if args.grid == "guidance" else [5.0]
    if args.pivot:
        pivot(Path(args.out), args.pivot)
        return
    if args.table:
        table(Path(args.out))
        return
    torch.set_num_threads(1)
    if args.no_guard:  # guided chunks as rtc_sample returns them, bounds unchecked (as before)
        from envactor.policy.acting import ActingBoundary

        def unguarded(self: Any, chunk: Any, obs: Any, ids: Any, norm: Any) -> Any:
            return chunk

        ActingBoundary._guard_guided = unguarded  # type: ignore[method-assign]
    sweep(args)


if __name__ == "__main__":
    main()
