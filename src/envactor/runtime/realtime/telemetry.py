"""What one real-time run measured: control-period jitter, deadlines, inference latency, delays.

:class:`Telemetry` keeps the raw samples (so tests and benchmarks can look at them) and
``to_dict()`` turns them into the summary the CLI prints and ``--json`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

NORMAL_STOPS = ("duration", "steps", "stopped", "robot_done")
"""Stop reasons that are not faults (a signal is reported as ``signal:SIGINT`` etc.)."""


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk swapped in by the inference loop (``chunk`` 0 is the first, computed before the
    control loop starts).

    Attributes:
        chunk: sequence number of the chunk in this run.
        snapshot_step: control steps completed when the inputs were snapshotted (t0); index i of
            the new chunk is meant for step ``t0 + i``.
        swap_step: control steps completed when the chunk was swapped in.
        start_index: index of the new chunk executed first (``swap_step - snapshot_step``; 0 for
            ``sync``, which holds instead of skipping).
        executed_before: s, actions of the previous chunk executed at the snapshot.
        forecast_delay: d passed to guided inference (max of the last ``delay_buffer``
            measured delays).
        measured_delay: ``ceil(latency / period)``, what the forecast learns from.
        latency_ms: wall time from snapshot to swap.
        weight_version: the policy's ``weight_version`` when the chunk was asked for.
    """

    chunk: int
    snapshot_step: int
    swap_step: int
    start_index: int
    executed_before: int
    forecast_delay: int
    measured_delay: int
    latency_ms: float
    weight_version: int = 0

    @property
    def actual_delay(self) -> int:
        """Control steps that ran while this chunk was being computed."""
        return self.swap_step - self.snapshot_step


def percentiles_ms(samples_s: list[float]) -> dict[str, float | None]:
    """``{"p50", "p99", "max"}`` of durations in seconds, as milliseconds (None when empty)."""
    if not samples_s:
        return {"p50": None, "p99": None, "max": None}
    arr = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "max": round(float(arr.max()), 3),
    }


@dataclass
class Telemetry:
    """Counters and samples of one run of
    :class:`~envactor.runtime.realtime.controller.RealtimeController`.

    ``lateness_s`` holds, per control step, how late the step started against its scheduled
    time (the control-period jitter); ``chunks`` one :class:`ChunkRecord` per chunk swap.
    """

    hz: float
    executor: str
    horizon: int
    s_min: int
    delay_buffer: int
    steps: int = 0
    duration_s: float = 0.0
    lateness_s: list[float] = field(default_factory=list)
    missed_deadlines: int = 0
    skipped_periods: int = 0
    chunks: list[ChunkRecord] = field(default_factory=list)
    held_steps: int = 0
    missed_chunks: int = 0
    clipped_steps: int = 0
    slew_limited_steps: int = 0
    stop_reason: str = "not_started"
    error: str | None = None
    leaked_threads: int = 0
    limit: dict[str, Any] | None = None
    """The health limit the run passed: ``{"limit", "measured", "threshold"}`` (see
    :class:`~envactor.runtime.realtime.health.HealthLimits`), else None."""

    @property
    def ok(self) -> bool:
        """True when the run ended for a normal reason (not a safe stop, no health limit
        passed)."""
        return self.stop_reason in NORMAL_STOPS or self.stop_reason.startswith("signal:")

    def version_of(self, source: tuple[int, int]) -> int:
        """The weight version of the chunk a step's action came from (held or safe steps:
        the newest chunk's)."""
        if 0 <= source[0] < len(self.chunks):
            return self.chunks[source[0]].weight_version
        return self.chunks[-1].weight_version if self.chunks else 0

    @property
    def chunk_switches(self) -> int:
        """Chunks swapped in while the control loop ran (the first chunk not counted)."""
        return max(0, len(self.chunks) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (percentiles in milliseconds, delays per chunk switch)."""
        switches = self.chunks[1:]
        forecast = [c.forecast_delay for c in switches]
        actual = [c.actual_delay for c in switches]
        return {
            "hz": self.hz,
            "executor": self.executor,
            "horizon": self.horizon,
            "s_min": self.s_min,
            "steps": self.steps,
            "duration_s": round(self.duration_s, 3),
            "jitter_ms": percentiles_ms(self.lateness_s),
            "missed_deadlines": self.missed_deadlines,
            "skipped_periods": self.skipped_periods,
            "inference_ms": percentiles_ms([c.latency_ms / 1e3 for c in self.chunks]),
            "chunk_switches": self.chunk_switches,
            "delay": {
                "buffer": self.delay_buffer,
                "forecast_mean": float(np.mean(forecast)) if forecast else None,
                "actual_mean": float(np.mean(actual)) if actual else None,
                "underestimated": int(sum(a > f for a, f in zip(actual, forecast))),
                "forecast": forecast,
                "measured": [c.measured_delay for c in switches],
                "actual": actual,
            },
            "held_steps": self.held_steps,
            "missed_chunks": self.missed_chunks,
            "clipped_steps": self.clipped_steps,
            "slew_limited_steps": self.slew_limited_steps,
            "executed_actions": self.steps,
            "stop_reason": self.stop_reason,
            "error": self.error,
            "leaked_threads": self.leaked_threads,
            "limit": self.limit,
            "ok": self.ok,
        }

    def rows(self) -> list[tuple[str, str]]:
        """(metric, value) pairs for a two-column table."""
        d = self.to_dict()

        def pct(p: dict[str, float | None]) -> str:
            if p["p50"] is None:
                return "-"
            return f"p50 {p['p50']:.2f}  p99 {p['p99']:.2f}  max {p['max']:.2f}"

        delay = d["delay"]
        fmean = "-" if delay["forecast_mean"] is None else f"{delay['forecast_mean']:.2f}"
        amean = "-" if delay["actual_mean"] is None else f"{delay['actual_mean']:.2f}"
        return [
            ("executor", f"{self.executor} (H={self.horizon}, s_min={self.s_min})"),
            ("rate", f"{self.hz:g} Hz, {self.steps} steps in {self.duration_s:.2f} s"),
            ("jitter (ms)", pct(d["jitter_ms"])),
            (
                "missed deadlines",
                f"{self.missed_deadlines} ({self.skipped_periods} periods skipped)",
            ),
            ("inference (ms)", pct(d["inference_ms"])),
            ("chunk switches", str(self.chunk_switches)),
            ("delay forecast / actual", f"{fmean} / {amean} ({delay['underestimated']} under)"),
            ("held steps", f"{self.held_steps} ({self.missed_chunks} missed chunks)"),
            ("held fraction", f"{self.held_steps / self.steps:.1%}" if self.steps else "-"),
            ("clipped / slew-limited", f"{self.clipped_steps} / {self.slew_limited_steps}"),
            ("stop reason", self.stop_reason + (f": {self.error}" if self.error else "")),
        ]
