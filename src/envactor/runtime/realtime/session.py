"""One ``envactor run`` session: one or more controller runs (episodes) on one robot, with the
robot connected once for all of them, an optional recording and an optional step log.

Whatever ends the session (the last episode, a safe stop, a health limit, Ctrl-C during a run
or between episodes, an exception) the robot is disconnected, the recording publishes every
frame written and the log is written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envactor.runtime.realtime.controller import RealtimeController
from envactor.runtime.realtime.recorder import DatasetRecorder
from envactor.runtime.realtime.steplog import StepLog
from envactor.runtime.realtime.steps import StepRecord
from envactor.runtime.realtime.telemetry import Telemetry

__all__ = ["SessionResult", "run_session"]


@dataclass
class SessionResult:
    """What a session did: each run's telemetry, the dataset and log files it wrote, and why
    it ended early (None when every episode ran)."""

    runs: list[Telemetry] = field(default_factory=list)
    dataset: Path | None = None
    log_files: list[Path] = field(default_factory=list)
    interrupted: str | None = None
    error: str | None = None  # the recording or the log failed (the message)

    @property
    def ok(self) -> bool:
        """Every run ended normally and nothing failed to be written."""
        return bool(self.runs) and all(t.ok for t in self.runs) and self.error is None


def _fan_out(hooks: list[Callable[[StepRecord], None]]) -> Callable[[StepRecord], None] | None:
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def each(rec: StepRecord) -> None:
        for hook in hooks:
            hook(rec)

    return each


@contextlib.contextmanager
def _held(robot: Any) -> Iterator[None]:
    """The robot's own ``session()`` (one connection for every run) when it has one."""
    session = getattr(robot, "session", None)
    if callable(session):
        with session():
            yield
    else:
        yield


def run_session(
    ctrl: RealtimeController,
    seconds: float,
    *,
    episodes: int = 1,
    reset_seconds: float = 0.0,
    recorder: DatasetRecorder | None = None,
    log: StepLog | None = None,
    log_dir: str | Path | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> SessionResult:
    """Run ``ctrl`` for ``episodes`` runs of ``seconds`` each, ``reset_seconds`` apart (the
    robot holds its last command meanwhile; reset the scene then). A run that does not end
    normally, or a signal, ends the session. ``say`` gets one line per episode boundary."""
    result = SessionResult()
    hooks: list[Callable[[StepRecord], None]] = [h for h in (recorder, log) if h is not None]
    ctrl.on_step = _fan_out(hooks)
    try:
        with _held(ctrl.robot):
            for episode in range(episodes):
                tel = ctrl.run(seconds)
                result.runs.append(tel)
                if recorder is not None:
                    recorder.end_episode()
                if log is not None:
                    log.next_episode()
                if not tel.ok or tel.stop_reason.startswith("signal:"):
                    result.interrupted = tel.stop_reason
                    break
                if episode + 1 < episodes:
                    say(
                        f"episode {episode + 1}/{episodes} done ({tel.stop_reason}); next in "
                        f"{reset_seconds:g} s (reset the scene now; Ctrl-C ends the session)"
                    )
                    time.sleep(reset_seconds)  # Ctrl-C here: KeyboardInterrupt
    except KeyboardInterrupt:
        result.interrupted = "signal:SIGINT"
    finally:
        ctrl.on_step = None
        _finish(result, recorder, log, log_dir)
    return result


def _finish(
    result: SessionResult,
    recorder: DatasetRecorder | None,
    log: StepLog | None,
    log_dir: str | Path | None,
) -> None:
    """Publish the recording and write the log, whatever happened before."""
    errors: list[str] = []
    if recorder is not None:
        try:
            result.dataset = recorder.close()
        except Exception as exc:
            errors.append(str(exc))
            published = recorder.frames and (recorder.root / "meta" / "info.json").is_file()
            result.dataset = recorder.root if published else None
    if log is not None and log_dir is not None:
        try:
            result.log_files = log.write(log_dir, result.runs)
        except OSError as exc:
            errors.append(f"writing the log to {log_dir} failed: {exc}")
    result.error = "; ".join(errors) or None
