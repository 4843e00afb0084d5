"""``envactor train``: argument hooks for ``envactor.cli`` (``add_train_args`` / ``run_train``)."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_train_args", "run_train"]


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor train POLICY --data DIR --out DIR ...``."""
    p.add_argument(
        "policy", help="policy YAML, registered policy name, or checkpoint dir (fine-tune)"
    )
    p.add_argument("--data", required=True, help="dataset directory (written by DatasetWriter)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/ and train_log.jsonl")
    p.add_argument("--steps", type=int, default=10_000, help="optimizer steps (schedule length)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm; <= 0 disables")
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoints/last")
    p.add_argument("--stop-at", type=int, default=None, help="end this call after step N")
    p.add_argument(
        "--keep-normalizer",
        action="store_true",
        help="keep the checkpoint's stats instead of recomputing from --data",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--override", "-o", action="append", default=[], help="dotted key=value")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON")


def run_train(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; prints where the checkpoint went."""
    from envactor.train.loop import train

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
        progress=not args.no_progress,
    )
    summary = {
        "step": result.step,
        "checkpoint": str(result.checkpoint),
        "final_loss": result.losses[-1] if result.losses else None,
        "samples_per_s": round(result.samples_per_s, 1),
        "log": str(result.log_path),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"trained to step {result.step}: checkpoint {result.checkpoint}")
        if result.losses:
            print(f"final loss {result.losses[-1]:.6g}, {result.samples_per_s:.0f} samples/s")
    return 0
