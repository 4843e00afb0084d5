"""``envactor serve``: its arguments and the command that runs a ``PolicyServer``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import sys

from envactor.runtime.cli_args import number
from envactor.runtime.serving.server import (
    API_KEY_ENV,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_SIZE,
    PolicyServer,
)

__all__ = ["add_serve_args", "api_keys", "run_serve"]


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor serve CKPT``."""
    parser.add_argument("ckpt", help="checkpoint directory, policy YAML or registered policy name")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    parser.add_argument("--port", type=number(int, ge=0, le=65535), default=8000)
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help="require 'Authorization: Api-Key <key>'; several keys comma-separated (one per "
        f"user or fleet; each has its own connection limit) (default: ${API_KEY_ENV} if set)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--max-batch", type=number(int, ge=1), default=16, help="1 disables batching"
    )
    parser.add_argument("--batch-timeout-ms", type=number(float, ge=0), default=2.0)
    parser.add_argument(
        "--max-message-mb",
        type=number(float, gt=0),
        default=DEFAULT_MAX_SIZE / 2**20,
        help="largest accepted frame in MiB (default 64; three raw 1080p cameras are 17.8)",
    )
    parser.add_argument(
        "--max-connections",
        type=number(int, ge=1),
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"most open connections (default {DEFAULT_MAX_CONNECTIONS}; beyond: HTTP 503)",
    )
    parser.add_argument(
        "--max-connections-per-key",
        type=number(int, ge=1),
        default=None,
        help="most open connections per API key (default: a quarter of --max-connections, so one "
        "key cannot take every slot; beyond: HTTP 429)",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=number(float, ge=0),
        default=DEFAULT_IDLE_TIMEOUT_S,
        help=f"close a connection that sends no frame for this long (default "
        f"{DEFAULT_IDLE_TIMEOUT_S:g}; 0: never)",
    )
    parser.add_argument("--override", "-o", action="append", default=[], help="dotted key=value")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up forward pass")


def api_keys(value: str | None) -> list[str] | None:
    """``--api-key`` (comma-separated keys) -> the list of keys (None: no key)."""
    keys = [k.strip() for k in (value or "").split(",") if k.strip()]
    return keys or None


def run_serve(args: argparse.Namespace) -> int:
    """``envactor serve``: build the policy and serve it until interrupted."""
    from envactor.policy.build import build_policy

    policy = build_policy(args.ckpt, device=args.device, overrides=args.override)
    if not args.no_warmup:
        policy.warmup()
    server = PolicyServer(
        policy,
        host=args.host,
        port=args.port,
        api_key=api_keys(args.api_key),
        max_batch=args.max_batch,
        batch_timeout_ms=args.batch_timeout_ms,
        max_size=int(args.max_message_mb * 2**20),
        max_connections=args.max_connections,
        max_connections_per_key=args.max_connections_per_key,
        idle_timeout_s=args.idle_timeout_s,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(
            f"envactor serve: WARNING: listening on {args.host} without an API key; anyone who "
            f"can reach the port can query the policy (set --api-key or ${API_KEY_ENV})",
            file=sys.stderr,
        )

    def ready() -> None:
        auth = "API key required" if args.api_key else "no API key"
        print(
            f"envactor serve: {policy.name} (weights v{policy.weight_version}) on {server.url} "
            f"({auth}; max_batch={server.max_batch}); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server.serve(ready))
    except OSError as exc:  # binding: busy port, unknown host, no permission
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise OSError(
            f"cannot listen on {args.host}:{args.port}: {reason or exc} (choose another --port)"
        ) from exc
    return 0
