"""A run's steps and telemetry written to a folder: ``steps.csv``, ``telemetry.json`` and
``actions.png`` (``envactor run --log DIR``; a dry run's would-be actions).

:class:`StepLog` is a controller's ``on_step`` hook that keeps each step's numbers (not its
observation): a few hundred bytes a step, so an hour at 50 Hz is tens of MB.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envactor.fsio import write_text
from envactor.runtime.realtime.steps import StepRecord
from envactor.runtime.realtime.telemetry import Telemetry

__all__ = ["StepLog"]


class StepLog:
    """Keep every step of one or more runs; :meth:`write` puts them in a folder.

    Args:
        action_names: names of the action dims for the CSV header and the plot (default
            ``a0, a1, ...``).
        sent: write the ``sent.*`` columns (what the robot ran); False for a dry run, where
            nothing is sent.
    """

    def __init__(self, action_names: Sequence[str] | None = None, *, sent: bool = True) -> None:
        self.action_names = list(action_names) if action_names is not None else None
        self.sent = sent
        self.rows: list[tuple[Any, ...]] = []
        self.episode = 0

    def __call__(self, rec: StepRecord) -> None:
        """The controller's ``on_step`` hook."""
        sent = rec.commanded
        self.rows.append(
            (self.episode, rec.step, rec.time_s, *rec.source, rec.weight_version,
             rec.safe_stop, np.array(rec.proposed, np.float64).reshape(-1),
             np.array(rec.action, np.float64).reshape(-1),
             np.array(sent, np.float64).reshape(-1))
        )  # fmt: skip

    def next_episode(self) -> None:
        """Steps from now on belong to the next run (the ``episode`` column)."""
        self.episode += 1

    def names(self, adim: int) -> list[str]:
        return self.action_names or [f"a{i}" for i in range(adim)]

    def write(self, folder: str | Path, runs: Sequence[Telemetry]) -> list[Path]:
        """Write ``steps.csv``, ``telemetry.json`` (one summary per run) and, when matplotlib
        is installed, ``actions.png``; the paths written."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        adim = len(self.rows[0][7]) if self.rows else 0
        names = self.names(adim)
        written = [out / "steps.csv", out / "telemetry.json"]
        with open(written[0], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                ["episode", "step", "time_s", "chunk", "chunk_index", "weight_version",
                 "safe_stop", *(f"proposed.{n}" for n in names),
                 *(f"written.{n}" for n in names),
                 *(f"sent.{n}" for n in names if self.sent)]
            )  # fmt: skip
            for ep, step, t, chunk, idx, ver, safe, prop, act, sent in self.rows:
                w.writerow(
                    [ep, step, f"{t:.6f}", chunk, idx, ver, int(safe),
                     *map(repr, prop.tolist()), *map(repr, act.tolist()),
                     *(map(repr, sent.tolist()) if self.sent else ())]
                )  # fmt: skip
        write_text(written[1], json.dumps([t.to_dict() for t in runs], indent=2) + "\n")
        png = self._plot(out / "actions.png", names, runs)
        if png is not None:
            written.append(png)
        return written

    def _plot(self, path: Path, names: list[str], runs: Sequence[Telemetry]) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        if not self.rows:
            return None
        episode = np.array([r[0] for r in self.rows])
        t = np.array([r[2] for r in self.rows])
        starts = np.flatnonzero(np.diff(episode) != 0) + 1
        for k in starts:  # one time axis: each run continues where the previous ended
            t[k:] += t[k - 1] - t[k] + (t[k - 1] - t[k - 2] if k > 1 else 0.0)
        chunk = np.array([r[3] for r in self.rows])
        prop = np.stack([r[7] for r in self.rows])
        act = np.stack([r[8] for r in self.rows])
        late = np.concatenate(
            [np.asarray(tel.lateness_s[: tel.steps]) for tel in runs] or [np.zeros(0)]
        )
        dims = len(names)
        fig, axes = plt.subplots(dims + 1, 1, figsize=(10, 2.2 * (dims + 1)), sharex=True)
        axes = np.atleast_1d(axes)
        switch = np.flatnonzero(np.diff(chunk) != 0) + 1
        for i, ax in enumerate(axes[:dims]):
            ax.plot(t, prop[:, i], lw=0.8, alpha=0.6, label="proposed")
            ax.plot(t, act[:, i], lw=1.4, label="written (after the safety filter)")
            for k in switch:
                ax.axvline(t[k], color="0.88", lw=0.5, zorder=0)
            ax.set_ylabel(names[i])
        axes[0].legend(loc="upper right", fontsize=8)
        ax = axes[-1]
        if len(late) == len(t):
            ax.plot(t, late * 1e3, lw=0.8, label="step start lateness")
        held = chunk < 0
        if held.any():
            ax.plot(t[held], np.zeros(held.sum()), "r|", ms=8, label="held / safe step")
        ax.set_ylabel("ms")
        ax.legend(loc="upper right", fontsize=8)
        for a in axes:
            for k in starts:
                a.axvline(t[k], color="k", ls="--", lw=0.8)
        ax.set_xlabel("time [s] (thin lines: chunk switches; dashed: a new run)")
        last = runs[-1].to_dict() if runs else {}
        fig.suptitle(
            f"{len(self.rows)} steps in {len(runs)} run(s); last run: jitter p99 "
            f"{(last.get('jitter_ms') or {}).get('p99')} ms, {last.get('missed_deadlines')} "
            f"missed deadlines, {last.get('held_steps')} held steps, stop: "
            f"{last.get('stop_reason')}",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
