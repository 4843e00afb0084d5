"""Online learning on the rollout workers: DAgger with the task's scripted expert as labeler.

Each iteration: the workers act with the current weights (version v) and the expert labels every
state they visit; the learner adds the labeled episodes to its aggregate dataset, fine-tunes
the policy on it, saves ``checkpoints/v<v+1>`` and publishes version v+1; the workers evaluate
it on a fixed set of episode seeds (the same every iteration, so the curve is a paired
comparison). A worker that dies drops the episodes it was running, in collection and in
evaluation alike: each row counts them (``dropped``, ``eval_dropped``) next to the finished
ones (``episodes``, ``eval_episodes``), and its success and return are means over the finished
episodes only. The start is a checkpoint (``init``) or a weak behaviour-cloning policy trained on
``init_demos`` expert episodes. ``state.json`` is written after every iteration, so
``resume=True`` continues from the last checkpoint with its weight version.

Outputs under ``out``: ``curve.csv``, ``curve.json``, ``curve.png``, ``checkpoints/v*/``,
``data/`` (the aggregate dataset), ``state.json``.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envactor import fsio
from envactor.distributed.dagger_data import (
    check_init_data,
    read_dataset,
    task_inputs,
    write_dataset,
)

__all__ = ["CURVE_COLUMNS", "OnlineSettings", "train_online"]

CURVE_COLUMNS = ("iteration", "version", "eval_success", "eval_return", "eval_episodes",
                 "eval_dropped", "collect_success", "episodes", "dropped", "dataset_episodes",
                 "dataset_frames", "train_loss", "max_staleness", "publish_mb", "publish_s",
                 "elapsed_s")  # fmt: skip
"""One row per iteration. ``eval_*`` and ``collect_success`` are over finished episodes only;
``episodes`` / ``dropped`` count the iteration's collection, ``eval_episodes`` / ``eval_dropped``
its evaluation (dropped: running on a worker that died)."""
EVAL_BASE = 1_000_000  # evaluation episode ids (and env seeds) start here
STATE_FILE = "state.json"


@dataclass
class OnlineSettings:
    """Sizes of the run; ``quick()`` is a smoke-test variant."""

    task: str = "envactor/PendulumSwingUp-v0"
    out: Path = Path("runs/online")
    workers: int = 2
    address: str | None = None
    seed: int = 0
    init: Path | None = None
    init_data: Path | None = None
    init_demos: int = 8
    init_steps: int = 300
    iterations: int = 4
    episodes_per_iter: int = 16
    eval_episodes: int = 32
    train_steps: int = 600
    batch_size: int = 256
    lr: float = 1e-3
    num_envs: int = 4
    executor: str = "sync"
    sync_every: str = "chunk"
    horizon: int = 8
    n_action_steps: int = 4
    action_noise_std: float = 0.1
    resume: bool = False
    overrides: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Refuse settings that cannot run, before anything starts or is written (a field's
        error names it; ``envactor train-online`` checks its flags while parsing)."""
        from envactor.distributed.broadcast import parse_sync_every
        from envactor.envs import task_spec

        task_spec(self.task)  # KeyError naming the closest task
        check_executor(self.executor)
        parse_sync_every(self.sync_every)
        sizes = {"workers": 0, "seed": 0, "iterations": 0, "init_demos": 1, "init_steps": 1,
                 "episodes_per_iter": 1, "eval_episodes": 1, "train_steps": 1,
                 "batch_size": 1, "num_envs": 1, "horizon": 1, "n_action_steps": 1}  # fmt: skip
        for name, low in sizes.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if self.n_action_steps > self.horizon:
            raise ValueError(
                f"n_action_steps: expected <= horizon={self.horizon}, got {self.n_action_steps}"
            )
        for name, positive in (("lr", True), ("action_noise_std", False)):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0 or (positive and value == 0):
                want = "> 0" if positive else ">= 0"
                raise ValueError(f"{name}: expected a finite number {want}, got {value!r}")
        if self.init is not None and not Path(self.init).exists():
            raise FileNotFoundError(f"init: checkpoint {self.init} does not exist")
        if self.init_data is not None:
            if self.init is not None:
                raise ValueError("init_data (--init-data) and init (--init): give one start")
            check_init_data(Path(self.init_data), task_spec(self.task))
        if self.init is not None:  # DAgger fine-tunes its policy: LeRobot's are acting-only
            from envactor.interop.lerobot import lerobot_checkpoint_dir

            if lerobot_checkpoint_dir(self.init) is not None:
                raise ValueError(
                    f"--init {self.init} is a LeRobot checkpoint: LeRobot policies are "
                    "acting-only in envactor (eval, serve, run), and DAgger trains its policy"
                )

    @classmethod
    def quick(cls, **kw: Any) -> OnlineSettings:
        """Tiny sizes: a minute on a laptop core."""
        base = dict(init_demos=4, init_steps=100, iterations=2, episodes_per_iter=8,
                    eval_episodes=8, train_steps=150, batch_size=128, num_envs=4)  # fmt: skip
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


def check_executor(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a registered chunk executor (with the closest
    name)."""
    from envactor.runtime.executors import EXECUTORS

    known = EXECUTORS.names()
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown executor {name!r}; known executors: {', '.join(known)}{hint}")


@dataclass
class _State:
    iteration: int
    version: int
    checkpoint: str
    dataset: str
    rows: list[dict[str, Any]]

    def save(self, out: Path) -> None:
        fsio.write_text(out / STATE_FILE, json.dumps(asdict(self), indent=2))


def _load_state(out: Path) -> _State:
    path = out / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"resume: {path} does not exist; start without --resume")
    raw = json.loads(path.read_text())
    try:
        return _State(**raw)
    except TypeError as exc:
        raise ValueError(f"{path}: not an envactor online-learning state ({exc})") from None


def _bootstrap(s: OnlineSettings, spec: dict[str, Any], progress: bool) -> Path:
    """A weak starting policy: behaviour cloning, briefly trained, on ``init_data`` or else
    on a few expert episodes collected here."""
    from envactor.policy.build import save_policy
    from envactor.runtime.collect import collect
    from envactor.train import train

    demos = s.out / "data" / "demos"
    inputs: list[str] = []
    if s.init_data is not None:
        demos = Path(s.init_data)
        inputs = [task_inputs(demos, spec)]  # the task's observations, not a camera it has
    else:
        collect(s.task, episodes=s.init_demos, out=demos, num_envs=s.num_envs, seed=s.seed,
                overwrite=True, progress=progress,
                env_kwargs={"action_noise_std": s.action_noise_std})  # fmt: skip
    overrides = [f"policy.params.horizon={s.horizon}",
                 f"policy.params.n_action_steps={s.n_action_steps}",
                 f"policy.params.control_hz={spec['control_hz']}", *inputs,
                 *s.overrides]  # fmt: skip
    res = train("flow", demos, out_dir=s.out / "train" / "init", steps=s.init_steps,
                batch_size=s.batch_size, lr=s.lr, seed=s.seed, save_every=s.init_steps,
                overrides=overrides, progress=progress,
                warmup_steps=min(50, s.init_steps // 10))  # fmt: skip
    res.policy.weight_version = 0
    return save_policy(res.policy, s.out / "checkpoints" / "v0000", step=res.step)


def _summary(report: Any) -> tuple[float | None, float]:
    """Mean success (None when no finished episode has a success criterion) and mean return,
    over the report's finished episodes (dropped ones have no metrics)."""
    succ = [e.metrics["success"] for e in report.episodes if e.metrics["success"] is not None]
    ret = [e.metrics["episode_return"] for e in report.episodes]
    return (float(np.mean(succ)) if succ else None), float(np.mean(ret)) if ret else 0.0


def train_online(
    s: OnlineSettings, *, progress: bool = True, faults: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    """Run DAgger (see the module docstring); returns the curve, one row per iteration.

    The settings are checked (:meth:`OnlineSettings.check`) before anything starts or is
    written. ``faults``: worker id -> vector steps after which it crashes (fault tests; see
    ``WorkerPool``).
    """
    s.check()
    from envactor.distributed.pool import WorkerPool, init_ray
    from envactor.distributed.store import STORE_NAME
    from envactor.distributed.worker import checkpoint_files
    from envactor.envs import task_spec
    from envactor.policy.build import build_policy, save_policy

    out = Path(s.out)
    spec = task_spec(s.task)
    t_start = time.perf_counter()
    if s.resume:
        state = _load_state(out)
    else:
        if (out / STATE_FILE).exists():
            raise FileExistsError(
                f"{out / STATE_FILE} exists: pass resume=True (--resume) or choose another out"
            )
        policy0 = None if s.init is None else build_policy(s.init)  # fails before any write
        out.mkdir(parents=True, exist_ok=True)
        if policy0 is None:
            ckpt = _bootstrap(s, spec, progress)
            demos = read_dataset(Path(s.init_data or out / "data" / "demos"), spec)
        else:
            ckpt = save_policy(policy0, out / "checkpoints" / f"v{policy0.weight_version:04d}")
            demos = []
        version0 = build_policy(ckpt).weight_version
        agg = out / "data" / "agg_0000"
        if demos:
            write_dataset(agg, demos, spec)
        state = _State(0, version0, str(ckpt.relative_to(out)), str(agg.relative_to(out)), [])
        state.save(out)
    aggregate = read_dataset(out / state.dataset, spec) if (out / state.dataset).exists() else []
    if s.workers > 0:
        init_ray(s.address)
    worker_kwargs = dict(
        policy=checkpoint_files(out / state.checkpoint), task=s.task, num_envs=s.num_envs,
        executor=s.executor, env_kwargs={"action_noise_std": s.action_noise_std},
        sync_every=s.sync_every, labeler="expert",
    )  # fmt: skip
    eval_ids = [EVAL_BASE + i for i in range(s.eval_episodes)]
    # a store of its own: another run in this Ray session may have left its store at a higher
    # version (it lives while a handle does), and versions must increase
    store_name = f"{STORE_NAME}-{uuid.uuid4().hex[:12]}"
    with WorkerPool(s.workers, worker_kwargs, faults=faults, store_name=store_name) as pool:
        try:
            state = _iterate(s, state, spec, pool, aggregate, eval_ids, t_start, progress)
        finally:
            if s.workers > 0:
                import ray

                ray.kill(pool.store)
    write_curve(out, state.rows, s)
    return state.rows


def _iterate(
    s: OnlineSettings,
    state: _State,
    spec: dict[str, Any],
    pool: Any,
    aggregate: list[dict[str, np.ndarray]],
    eval_ids: list[int],
    t_start: float,
    progress: bool,
) -> _State:
    """The DAgger iterations from ``state`` on (``state.json`` saved after each); the last
    state."""
    from envactor.distributed.broadcast import WeightPublisher
    from envactor.policy.build import build_policy, save_policy
    from envactor.train import train

    out = Path(s.out)
    publisher = WeightPublisher(pool.store)
    policy = build_policy(out / state.checkpoint)
    pub = publisher.publish(policy, state.version)
    if not state.rows:  # the starting point of the curve
        ev = pool.collect(eval_ids, seed=s.seed)
        state.rows.append(_row(0, state.version, ev, None, aggregate, None, pool, pub))
        state.rows[-1]["elapsed_s"] = time.perf_counter() - t_start
        state.save(out)
        _print_row(state.rows[-1])
    for it in range(state.iteration + 1, s.iterations + 1):
        ids = [it * 100_000 + i for i in range(s.episodes_per_iter)]
        rep = pool.collect(ids, seed=s.seed)
        for ep in rep.episodes:
            assert ep.expert_action is not None  # the workers have a labeler
            obs = {k: ep.trajectory[k] for k in spec["observation"]}
            aggregate.append({**obs, "action": ep.expert_action,
                              "reward": ep.trajectory["reward"]})  # fmt: skip
        agg = out / "data" / f"agg_{it:04d}"
        write_dataset(agg, aggregate, spec)
        res = train(
            out / state.checkpoint, agg, out_dir=out / "train" / f"iter_{it:04d}",
            steps=s.train_steps, batch_size=s.batch_size, lr=s.lr, seed=s.seed + it,
            save_every=s.train_steps, progress=progress, keep_normalizer=True,
            warmup_steps=min(50, s.train_steps // 10),
        )  # fmt: skip
        version = state.version + 1
        res.policy.weight_version = version
        ckpt = save_policy(res.policy, out / "checkpoints" / f"v{version:04d}", step=res.step)
        pub = publisher.publish(res.policy, version)
        ev = pool.collect(eval_ids, seed=s.seed)
        loss = float(np.mean(res.losses[-20:])) if res.losses else None
        row = _row(it, version, ev, rep, aggregate, loss, pool, pub)
        row["elapsed_s"] = time.perf_counter() - t_start
        old = out / state.dataset
        rel = (str(ckpt.relative_to(out)), str(agg.relative_to(out)))
        state = _State(it, version, *rel, [*state.rows, row])
        state.save(out)
        if old != agg and old.exists():
            shutil.rmtree(old)
        _print_row(state.rows[-1])
    return state


def _row(
    it: int,
    version: int,
    ev: Any,
    rep: Any,
    aggregate: list[dict[str, np.ndarray]],
    loss: float | None,
    pool: Any,
    pub: Any,
) -> dict[str, Any]:
    """One curve row: ``ev`` the evaluation report, ``rep`` the iteration's collection."""
    succ, ret = _summary(ev)
    versions = {int(v) for e in ev.episodes for v in e.trajectory["weight_version"]}
    if versions and versions != {version}:
        raise RuntimeError(f"evaluation of version {version} ran weights {sorted(versions)}")
    return {
        "iteration": it, "version": version, "eval_success": succ, "eval_return": ret,
        "eval_episodes": ev.finished, "eval_dropped": len(ev.dropped),
        "collect_success": None if rep is None else _summary(rep)[0],
        "episodes": 0 if rep is None else rep.finished,
        "dropped": 0 if rep is None else len(rep.dropped), "dataset_episodes": len(aggregate),
        "dataset_frames": sum(len(e["action"]) for e in aggregate), "train_loss": loss,
        "max_staleness": pool.status()["max_staleness"], "publish_mb": pub.nbytes / 1e6,
        "publish_s": pub.put_s, "elapsed_s": 0.0,
    }  # fmt: skip


def _print_row(row: dict[str, Any]) -> None:
    succ = row["eval_success"]
    collected = (
        f"collected {row['episodes']} episodes ({row['dropped']} dropped), "
        if row["iteration"] > 0 else ""
    )  # fmt: skip
    print(
        f"iteration {row['iteration']}: version {row['version']}, {collected}eval success "
        f"{'n/a' if succ is None else f'{succ:.2f}'}, return {row['eval_return']:.1f} over "
        f"{row['eval_episodes']} episodes ({row['eval_dropped']} dropped), "
        f"dataset {row['dataset_episodes']} episodes, {row['elapsed_s']:.0f}s",
        flush=True,
    )


def write_curve(out: Path, rows: list[dict[str, Any]], s: OnlineSettings) -> None:
    """curve.csv, curve.json and curve.png (eval success and return vs iteration)."""
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CURVE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()}
    (out / "curve.json").write_text(json.dumps({"rows": rows, "settings": settings}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    its = [r["iteration"] for r in rows]
    ax.plot(its, [r["eval_success"] or 0.0 for r in rows], marker="o", label="eval success")
    ax.set_xlabel("DAgger iteration (weight version)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(its)
    ax.grid(alpha=0.3)
    ax.set_title(f"{s.task}: DAgger, {s.workers} workers")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=120)
    plt.close(fig)
