"""``envactor demo``: the whole job on one machine, on embedded defaults, no network.

1. collect expert demonstrations on the bimodal pendulum swing-up task, the expert injecting
   recorded torque perturbations (``demo_perturb_std``, DART-style);
2. train a ``flow`` chunk policy on them (learn mode), with training-time RTC on
   (``train_max_delay``: the first d actions given clean, d drawn per example);
3. evaluate it across parallel envs for every executor at delays d = 0..4 and write
   ``runs/demo/{results.csv, results.json, success_vs_delay.png, eval_commands.txt, policy/}``
   (``eval_commands.txt``: the ``envactor eval`` command that reproduces each cell).

The run is built in ``runs/.demo-staging-<pid>`` and replaces ``runs/demo`` as one unit only
once every phase succeeded, so a re-run works and a failed one leaves the previous outputs.

The expected shape (the RTC paper's in miniature): at d = 0 the policy is close to the expert;
as d grows, naive switching and temporal ensembling lose success while RTC keeps it. ``rtc`` is
guided sampling on the trained model; ``rtc_trained`` is training-time RTC (same model, the
committed prefix written in while sampling). Why the data are perturbed: docs/tasks.md.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK = "envactor/PendulumSwingUp-v0"
EXECUTORS = (
    "sync", "naive_async", "temporal_ensemble", "bid", "blend", "rtc", "rtc_identity",
    "rtc_trained",
)  # fmt: skip
COLUMNS = ("executor", "delay", "episodes", "success_rate", "return_mean", "return_std",
           "jerk_mean", "held_steps_mean", "length_mean")  # fmt: skip


@dataclass
class DemoSettings:
    """Sizes of each phase; ``quick()`` is the smoke-test variant."""

    out: Path = Path("runs/demo")
    seed: int = 0
    demo_episodes: int = 200
    train_steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    eval_episodes: int = 64
    num_envs: int = 16
    delays: tuple[int, ...] = (0, 1, 2, 3, 4)
    executors: tuple[str, ...] = EXECUTORS
    task: str = TASK
    horizon: int = 8
    n_action_steps: int = 4  # s of the sync executor (Diffusion Policy's H/2)
    action_noise_std: float = 0.1
    demo_perturb_std: float = 0.5  # recorded expert torque perturbation (N m) in the demos
    train_max_delay: int = 4  # training-time RTC: d in {0..4} per example (0: off)
    bid_samples: int = 4  # bid: N candidate chunks per replan (4: the demo stays within +30%)
    bid_mode_size: int = 3  # bid: K, the sizes of forward contrast's positive and negative sets
    weak_step: int = 1000  # bid's weak policy: this training step's checkpoint (0: coherence only)
    overrides: list[str] = field(default_factory=list)
    smoke_test: bool = False  # the table and results.json say the numbers are not results

    @classmethod
    def quick(cls, **kw: Any) -> DemoSettings:
        """A few minutes' job shrunk to well under two: tiny data, short training, few episodes
        (a smoke test: its numbers are not results)."""
        base = dict(demo_episodes=24, train_steps=150, batch_size=128, eval_episodes=8,
                    num_envs=8, delays=(0, 2, 4), weak_step=50, smoke_test=True)  # fmt: skip
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


def _phase(name: str) -> float:
    from rich.console import Console

    Console(stderr=True).rule(f"[bold]{name}")
    return time.perf_counter()


# ---------------------------------------------------------------------------- output folder
DEMO_ENTRIES = frozenset(
    {"results.csv", "results.json", "success_vs_delay.png", "eval_commands.txt", "policy",
     "dataset", "train"}
)  # fmt: skip
"""What a demo writes in its output folder (anything else there: the folder is not a demo's)."""
_SIBLING = re.compile(r"^\.(?P<name>.+)-(?P<kind>staging|old)-(?P<pid>\d+)$")


def _sibling(out: Path, kind: str, pid: int) -> Path:
    """``.<name>-staging-<pid>`` (a run in progress) or ``.<name>-old-<pid>`` (a swap's aside)."""
    return out.parent / f".{out.name}-{kind}-{pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists under another user
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a folder tree, or a link or file in its place."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def check_out_dir(out: Path) -> None:
    """``out`` is absent, or a folder holding nothing but a previous demo's outputs (so
    replacing it as a whole loses nothing else)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another out folder")
    extra = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES)
    if extra:
        raise FileExistsError(
            f"{out} holds files a demo does not write ({', '.join(extra[:5])}); the demo replaces "
            "its output folder as a whole, so choose another out folder or move them"
        )


def clean_stale(out: Path) -> None:
    """Remove the staging folders of demo runs into ``out`` whose process is gone; put back an
    aside ``out`` left by a swap that died between its two renames."""
    if not out.parent.is_dir():
        return
    found = []
    for path in out.parent.iterdir():
        m = _SIBLING.match(path.name)
        if m and m["name"] == out.name:
            pid = int(m["pid"])
            if pid == os.getpid() or not _pid_alive(pid):
                found.append((m["kind"] != "old", path))
    for is_staging, path in sorted(found):  # asides first
        if not is_staging and not out.exists():
            path.rename(out)
        else:
            _remove(path)


def _swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by ``staging`` as one unit: old moved aside, new moved in, old removed."""
    check_out_dir(out)
    aside = _sibling(out, "old", os.getpid())
    if out.exists():
        out.rename(aside)
    try:
        staging.rename(out)
    except BaseException:
        if aside.exists() and not out.exists():
            aside.rename(out)
        raise
    _remove(aside)


def run_demo(settings: DemoSettings, *, progress: bool = True) -> list[dict[str, Any]]:
    """Run the three phases; return one result row per (executor, delay).

    The run is built in a staging folder beside ``settings.out`` and swapped in only once every
    phase succeeded, replacing a previous demo's outputs as one unit; a failed or interrupted run
    leaves them untouched (and its staging folder removed).
    """
    out = Path(os.path.abspath(settings.out))  # "runs/demo/" or "." name a folder to swap
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    staging = _sibling(out, "staging", os.getpid())
    staging.mkdir()
    try:
        rows, meta = _run_phases(settings, staging, progress=progress)
        _swap_in(staging, out)
    except BaseException:
        _remove(staging)
        raise
    print_table(rows, meta)
    return rows


def _run_phases(
    settings: DemoSettings, work: Path, *, progress: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Collect, train and evaluate into ``work``; paths recorded are those under settings.out."""
    from envactor.envs import task_spec

    spec = task_spec(settings.task)
    env_kwargs = {"action_noise_std": settings.action_noise_std}
    timings: dict[str, Any] = {}
    t0 = _phase(f"1/3 collect {settings.demo_episodes} expert episodes on {settings.task}")
    data = _collect_phase(settings, spec, work, env_kwargs, progress)
    timings["collect_s"] = time.perf_counter() - t0
    t0 = _phase(f"2/3 train flow policy, {settings.train_steps} steps")
    result = _train_phase(settings, spec, work, progress)
    timings["train_s"] = time.perf_counter() - t0
    executors = [e for e in settings.executors if e != "rtc_trained" or settings.train_max_delay]
    t0 = _phase(f"3/3 evaluate {len(executors)} executors x delays {list(settings.delays)}")
    expert, rows, commands = _evaluate_phase(
        settings, spec, work, executors, env_kwargs, progress, timings
    )
    timings["evaluate_s"] = time.perf_counter() - t0
    meta = _meta(settings, data, expert, result, timings, commands)
    write_results(work, rows, meta)
    return rows, meta


def _collect_phase(
    settings: DemoSettings,
    spec: dict[str, Any],
    work: Path,
    env_kwargs: dict[str, Any],
    progress: bool,
) -> Any:
    """The expert's perturbed demonstrations into ``work/dataset``."""
    from envactor.policy.build import build_policy
    from envactor.runtime.collect import collect

    expert_policy = build_policy(
        spec["expert_config"], overrides=[f"policy.params.perturb_std={settings.demo_perturb_std}"]
    )
    return collect(
        settings.task, episodes=settings.demo_episodes, out=work / "dataset",
        num_envs=settings.num_envs, seed=settings.seed, progress=progress,
        env_kwargs=env_kwargs, policy=expert_policy,
    )  # fmt: skip


def _train_phase(settings: DemoSettings, spec: dict[str, Any], work: Path, progress: bool) -> Any:
    """The flow policy (training-time RTC when ``train_max_delay``), saved to ``work/policy``."""
    from envactor.policy.build import save_policy
    from envactor.train import train

    overrides = [
        f"policy.params.horizon={settings.horizon}",
        f"policy.params.n_action_steps={settings.n_action_steps}",
        f"policy.params.control_hz={spec['control_hz']}",
        *_prefix_overrides(settings.train_max_delay),
        *settings.overrides,
    ]
    result = train("flow", work / "dataset", out_dir=work / "train", steps=settings.train_steps,
                   batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                   save_every=save_every(settings), overrides=overrides, progress=progress,
                   warmup_steps=min(100, settings.train_steps // 10))  # fmt: skip
    save_policy(result.policy, work / "policy", step=result.step)
    return result


def _evaluate_phase(
    settings: DemoSettings,
    spec: dict[str, Any],
    work: Path,
    executors: list[str],
    env_kwargs: dict[str, Any],
    progress: bool,
    timings: dict[str, Any],
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """The expert's reference, then every (executor, delay) cell: rows and eval commands (the
    seconds each executor's cells took go to ``timings["evaluate_s_by_executor"]``)."""
    from envactor.policy.build import build_policy
    from envactor.runtime.evaluate import evaluate

    task = settings.task
    policy = build_policy(work / "policy")
    expert = evaluate(spec["expert_config"], task, num_envs=settings.num_envs,
                      num_episodes=settings.eval_episodes, seed=eval_seed(settings),
                      env_kwargs=env_kwargs)  # fmt: skip
    rows: list[dict[str, Any]] = []
    commands: list[str] = []
    grid = [(e, d) for e in executors for d in settings.delays]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), desc="evaluate", unit="run")
    seconds = timings.setdefault("evaluate_s_by_executor", {})
    for executor, delay in grid:
        t0 = time.perf_counter()
        res = evaluate(
            policy, task, num_envs=settings.num_envs, num_episodes=settings.eval_episodes,
            executor=executor, delay=delay, seed=eval_seed(settings), env_kwargs=env_kwargs,
            n_action_steps=execution_horizon(executor, delay, settings.n_action_steps),
            executor_kwargs=executor_settings(settings, executor, work),
        )  # fmt: skip
        seconds[executor] = seconds.get(executor, 0.0) + time.perf_counter() - t0
        summary = res.summary()
        rows.append({k: summary[k] for k in COLUMNS})
        commands.append(eval_command(settings, executor, delay))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(executor=executor, d=delay, success=summary["success_rate"])
    if bar is not None:
        bar.close()
    return expert, rows, commands


def _meta(
    settings: DemoSettings,
    data: Any,
    expert: Any,
    result: Any,
    timings: dict[str, Any],
    commands: list[str],
) -> dict[str, Any]:
    """``results.json``'s record of the run besides the rows."""
    meta: dict[str, Any] = {"task": settings.task}
    if settings.smoke_test:
        meta["smoke_test"] = True
        meta["note"] = SMOKE_NOTE
    meta.update({
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "dataset": {
            "episodes": data.episodes,
            "frames": data.frames,
            "expert_success_rate_collect": data.success_rate,
        },
        "expert": expert.summary(),
        "train": {
            "steps": result.step,
            "final_loss": result.final_loss,
            "samples_per_s": result.samples_per_s,
        },
        "timings_s": timings,
        "eval_commands": commands,
    })  # fmt: skip
    return meta


SMOKE_NOTE = (
    "SMOKE TEST (envactor demo --quick): tiny data, short training and few episodes per cell; "
    "these numbers show the pipeline runs, they are not results (run envactor demo for those)"
)


def eval_seed(settings: DemoSettings) -> int:
    """The seed of every evaluation run of the demo (episode j: env seed eval_seed + j)."""
    return 10_000 + settings.seed


def eval_command(settings: DemoSettings, executor: str, delay: int) -> str:
    """The ``envactor eval`` command that reproduces the table cell (executor, delay)."""
    argv = [
        "envactor", "eval", str(settings.out / "policy"), "--env", settings.task,
        "--executor", executor, "--delay", str(delay),
        "--n-action-steps", str(execution_horizon(executor, delay, settings.n_action_steps)),
        "--action-noise", repr(float(settings.action_noise_std)),
        "--episodes", str(settings.eval_episodes), "--num-envs", str(settings.num_envs),
        "--seed", str(eval_seed(settings)),
    ]  # fmt: skip
    for key, value in executor_settings(settings, executor, settings.out).items():
        argv += ["--executor-opt", f"{key}={value}"]
    return shlex.join(argv)


def save_every(settings: DemoSettings) -> int:
    """Checkpoint interval of the training run: ``weak_step`` when bid uses a weak policy (its
    checkpoint is the one at that step), else only the end."""
    if "bid" in settings.executors and 0 < settings.weak_step < settings.train_steps:
        return settings.weak_step
    return settings.train_steps


def weak_checkpoint(settings: DemoSettings, out: Path) -> Path | None:
    """The policy folder of bid's weak policy under the demo folder ``out``: the training run's
    checkpoint at ``weak_step`` (an earlier checkpoint of the same run, as the BID paper's weak
    policy); None when ``weak_step`` is 0 (backward coherence alone)."""
    if not 0 < settings.weak_step < settings.train_steps:
        return None
    return out / "train" / "checkpoints" / f"step_{settings.weak_step:06d}" / "policy"


def executor_settings(settings: DemoSettings, executor: str, out: Path) -> dict[str, Any]:
    """The executor keywords of the demo beyond d and s: bid's N, K and weak policy."""
    if executor != "bid":
        return {}
    n = settings.bid_samples
    opts: dict[str, Any] = {"num_samples": n, "mode_size": min(settings.bid_mode_size, n)}
    weak = weak_checkpoint(settings, out)
    if weak is not None:
        opts["weak"] = str(weak)
    return opts


def _prefix_overrides(max_delay: int) -> list[str]:
    """Training-time RTC for the flow policy (its velocity must read per-token flow time)."""
    if max_delay <= 0:
        return []
    return [
        "model.components.velocity.type=flow_prefix_velocity_mlp",
        f"policy.params.prefix_max_delay={max_delay}",
    ]


def execution_horizon(executor: str, delay: int, sync_s: int) -> int:
    """s per executor: ``sync`` runs its receding horizon; the asynchronous ones replan as soon
    as the previous inference is done, s = max(d, 1), the smallest feasible s (d <= H - s
    holds for d <= H/2). Temporal ensembling queries every step whatever s is."""
    return sync_s if executor == "sync" else max(delay, 1)


def write_results(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """results.csv, results.json, eval_commands.txt and success_vs_delay.png under ``out``."""
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps({"rows": rows, **meta}, indent=2))
    if meta.get("eval_commands"):
        header = [
            "# One `envactor eval` command per cell of results.csv (same order), reproducing it",
            "# exactly: the demo's s (--n-action-steps), env noise (--action-noise), episodes",
            "# and seed, which differ from eval's defaults.",
        ]
        if meta.get("smoke_test"):
            header.append("# " + SMOKE_NOTE)
        (out / "eval_commands.txt").write_text("\n".join(header + meta["eval_commands"]) + "\n")
    plot_success(rows, out / "success_vs_delay.png", expert=meta["expert"]["success_rate"],
                 title=f"{meta['task']}: flow policy")  # fmt: skip


def plot_success(
    rows: list[dict[str, Any]], path: Path, *, expert: float | None = None, title: str = ""
) -> None:
    """Success rate vs delay, one line per executor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for executor in dict.fromkeys(r["executor"] for r in rows):
        mine = [r for r in rows if r["executor"] == executor]
        pts = sorted((r["delay"], r["success_rate"] or 0.0) for r in mine)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=executor)
    if expert is not None:
        ax.axhline(expert, color="gray", linestyle="--", linewidth=1, label="expert (d=0)")
    ax.set_xticks(sorted({r["delay"] for r in rows}))
    ax.set_xlabel("inference delay d (control steps)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """The results as a table (never cut), the expert's success, and how to reproduce a cell."""
    from rich.console import Console

    from envactor.console import new_table
    from envactor.console import print_table as print_whole

    smoke = bool(meta.get("smoke_test"))
    title = f"{meta['task']}: success / return / jerk by executor and delay"
    table = new_table(
        title + (" (SMOKE TEST, not results)" if smoke else ""),
        {"executor": "left", "delay": "right", "success_rate": "right", "return_mean": "right",
         "jerk_mean": "right", "held_steps_mean": "right"},
    )  # fmt: skip
    for r in rows:
        table.add_row(r["executor"], str(r["delay"]), f"{r['success_rate']:.2f}",
                      f"{r['return_mean']:.1f}", f"{r['jerk_mean']:.4f}",
                      f"{r['held_steps_mean']:.1f}")  # fmt: skip
    print_whole(table)
    console = Console(soft_wrap=True)  # long lines (commands) are never cut
    e = meta["expert"]
    console.print(
        f"expert (sync, d=0): success {e['success_rate']:.2f}, return {e['return_mean']:.1f}"
    )
    commands = meta.get("eval_commands") or []
    if commands:
        pick = next(
            (i for i, r in enumerate(rows) if r["executor"] == "rtc" and r["delay"] == 2), 0
        )
        out = meta["settings"]["out"]
        cell = f"{rows[pick]['executor']} at d={rows[pick]['delay']}"
        console.print(f"reproduce a cell with envactor eval, e.g. {cell}:", highlight=False)
        console.print(f"  {commands[pick]}", markup=False, highlight=False)
        console.print(
            f"every cell's command: {out}/eval_commands.txt (eval's own defaults differ: "
            "s = the policy's n_action_steps, no action noise)",
            markup=False,
            highlight=False,
        )
    times = {k: v for k, v in meta["timings_s"].items() if isinstance(v, int | float)}
    console.print(f"timings: {', '.join(f'{k} {v:.0f}s' for k, v in times.items())}")
    if smoke:
        console.print(f"[bold yellow]{SMOKE_NOTE}[/]", highlight=False)
