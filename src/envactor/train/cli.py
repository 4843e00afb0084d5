"""``envactor train``: argument hooks for ``envactor.cli`` (``add_train_args`` / ``run_train``)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_train_args", "run_train"]


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor train POLICY --data DIR --out DIR ...``."""
    from envactor.runtime.cli_args import number

    positive_int, non_negative_int = number(int, ge=1), number(int, ge=0)
    non_negative_float = number(float, ge=0)

    p.add_argument(
        "policy", help="policy YAML, registered policy name, or checkpoint dir (fine-tune)"
    )
    p.add_argument(
        "--data",
        required=True,
        help="LeRobot dataset directory (v3.0 or v2.1); a registered POLICY takes its input "
        "features and action dimension from it",
    )
    p.add_argument("--out", required=True, help="run directory: checkpoints/ and train_log.jsonl")
    p.add_argument(
        "--steps", type=positive_int, default=10_000, help="optimizer steps (schedule length)"
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="windows per step")
    p.add_argument("--lr", type=non_negative_float, default=3e-4, help="peak learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="AdamW's")
    p.add_argument(
        "--warmup-steps", type=non_negative_int, default=100, help="linear warm-up steps"
    )
    p.add_argument(
        "--grad-clip", type=number(float), default=1.0, help="max grad norm; <= 0 disables"
    )
    p.add_argument("--save-every", type=positive_int, default=1000, help="checkpoint period")
    p.add_argument(
        "--log-every",
        type=positive_int,
        default=10,
        help="steps per train_log.jsonl record (the mean of their losses)",
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="initial weights and batch sampling"
    )
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoints/last")
    p.add_argument(
        "--stop-at",
        type=positive_int,
        default=None,
        help="end this call after step N (default: run to --steps)",
    )
    p.add_argument(
        "--keep-normalizer",
        action="store_true",
        help="keep the checkpoint's stats instead of recomputing from --data",
    )
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--override", "-o", action="append", default=[], help="dotted key=value")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON")


def run_train(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; prints where the checkpoint went."""
    from envactor.train.loop import norm_modes, stats_summary, train

    result = train(
        args.policy,
        args.data,
        out_dir=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip if args.grad_clip > 0 else None,
        save_every=args.save_every,
        log_every=args.log_every,
        seed=args.seed,
        resume=args.resume,
        stop_at=args.stop_at,
        keep_normalizer=args.keep_normalizer,
        device=args.device,
        overrides=args.override,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    modes = {k: str(m) for k, m in norm_modes(result.policy).items()}
    summary = {
        "step": result.step,
        "checkpoint": str(result.checkpoint),
        "final_loss": result.final_loss,
        "samples_per_s": round(result.samples_per_s, 1),
        "log": str(result.log_path),
        "normalizer": {
            k: {"mode": modes[k], "stats": src} for k, src in result.stats_sources.items()
        },
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"trained to step {result.step}: checkpoint {result.checkpoint}")
        if result.final_loss is not None:
            print(
                f"final loss {result.final_loss:.6g} (last record of {result.log_path}), "
                f"{result.samples_per_s:.0f} samples/s"
            )
        print(f"normalizer: {stats_summary(norm_modes(result.policy), result.stats_sources)}")
    return 0
