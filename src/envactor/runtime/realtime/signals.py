"""What a controller run changes in the interpreter for its duration, and puts back after:
SIGINT/SIGTERM handlers that ask the run to stop, and Python's GIL switch interval."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["run_settings"]


@contextlib.contextmanager
def run_settings(
    stop: Callable[[str], None], *, handle_signals: bool, switch_interval: float | None
) -> Iterator[None]:
    """While the block runs: SIGINT/SIGTERM call ``stop("signal:SIGINT")`` (only on the main
    thread, and only with ``handle_signals``; the handler sets a flag and takes no lock), and
    the GIL switch interval is ``switch_interval`` (None: unchanged). Both are restored."""
    previous: dict[signal.Signals, object] = {}
    if handle_signals and threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop(f"signal:{signal.Signals(signum).name}")

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, on_signal)
    old_interval = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        sys.setswitchinterval(old_interval)
