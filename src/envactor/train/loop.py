"""The learn-mode loop: dataset windows -> ``policy.learn_mode`` steps -> checkpoints and a log.

One step: sample B windows uniformly (seeded numpy Generator), set the learning rate (linear
warmup, then cosine to zero), and run ``policy.learn_mode.forward(batch)`` -- loss, backward,
gradient clipping, AdamW, EMA via ``policy.update()``. That is the only training step.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envactor.data import ChunkWindows, DatasetError
from envactor.data.open import Dataset, open_dataset
from envactor.data.stats import training_stats
from envactor.normalize import NormMode
from envactor.policy import Policy, build_policy
from envactor.train.from_dataset import dataset_overrides
from envactor.train.state import (
    CHECKPOINTS_DIR,
    POLICY_DIR,
    TrainError,
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    restore_trainer_state,
    save_training_checkpoint,
)

__all__ = [
    "LOG_FILE",
    "TrainConfig",
    "TrainResult",
    "check_dataset",
    "lr_at",
    "norm_modes",
    "stats_summary",
    "train",
]

LOG_FILE = "train_log.jsonl"
# Changing these between a run and its resume breaks the equality with an uninterrupted run.
_RESUME_CHECKED = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "seed")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run (stored in every checkpoint's ``trainer_state.json``)."""

    steps: int = 10_000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    save_every: int = 1000
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "save_every", "log_every")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [
            f"{k}={getattr(self, k)}"
            for k in ("lr", "weight_decay", "warmup_steps")
            if getattr(self, k) < 0
        ]
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad.append(f"grad_clip={self.grad_clip} (use None to disable)")
        if bad:
            raise ValueError(f"invalid training settings: {', '.join(bad)}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to 0."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """What a ``train`` call did."""

    policy: Policy
    out_dir: Path
    step: int  # optimizer steps done in total (including any before a resume)
    checkpoint: Path  # the newest step directory's policy checkpoint (for build_policy)
    log_path: Path
    losses: list[float] = field(default_factory=list)  # per step of this call
    samples_per_s: float = 0.0  # over this call's steps, excluding checkpoint writes
    final_loss: float | None = None
    """The loss of the last ``train_log.jsonl`` record of this call: the mean over its last
    logging window (``log_every`` steps), the number the progress bar and the log show."""
    stats_sources: dict[str, str] = field(default_factory=dict)
    """Per normalized key, where its stats came from: ``meta/stats.json``, ``computed from the
    data``, ``no stats needed`` (identity, image) or ``checkpoint`` (resume, keep_normalizer)."""


def norm_modes(policy: Policy) -> dict[str, NormMode]:
    """Normalization mode of each input feature and of ``"action"``, as the policy declares."""
    modes: dict[str, NormMode] = {k: s.norm for k, s in policy.input_features.items()}
    modes["action"] = policy.params.action_norm
    return modes


def check_dataset(policy: Policy, dataset: Dataset) -> None:
    """Every declared input and the action exist in ``dataset`` with the policy's shapes."""
    where = dataset.info_path
    hint = (
        "the policy's config gives its input features; match them to the dataset, or train a "
        "registered policy name, which takes them from the dataset"
    )
    for key, spec in policy.input_features.items():
        feat = dataset.features.get(key)
        if feat is None:
            raise DatasetError(
                f"{where}: policy {policy.name!r} needs observation {key!r}; the dataset has "
                f"{dataset.data_keys} ({hint})"
            )
        if feat.shape != spec.shape or (spec.dtype == "uint8") != (feat.dtype == "uint8"):
            raise DatasetError(
                f"{where}: {key!r} is shape {list(feat.shape)} {feat.dtype}; policy "
                f"{policy.name!r} expects shape {list(spec.shape)} {spec.dtype} "
                f"(policy.params.input_features; {hint})"
            )
    action = dataset.features.get("action")
    want = (policy.params.action_dim,)
    if action is None or action.shape != want:
        found = "missing" if action is None else f"shape {list(action.shape)}"
        raise DatasetError(
            f"{where}: 'action' is {found}; policy {policy.name!r} expects {list(want)} "
            "(policy.params.action_dim)"
        )


def _stats_record(modes: Mapping[str, NormMode], sources: Mapping[str, str]) -> dict[str, Any]:
    return {k: {"mode": modes[k], "stats": sources[k]} for k in modes if k in sources}


def stats_summary(modes: Mapping[str, NormMode], sources: Mapping[str, str]) -> str:
    """One line: each key's normalization mode and where its stats came from."""
    return "; ".join(f"{k} {modes[k]} ({sources[k]})" for k in modes if k in sources)


def _step(line: str) -> float:
    """The ``step`` of a log line; a blank or torn line (crash mid-write) sorts last."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class _Log:
    """JSON lines: one record per ``log_every`` steps with the mean of each scalar."""

    def __init__(self, path: Path, start: int) -> None:
        kept = []
        if start > 0 and path.is_file():  # drop records past the checkpoint we resume from
            kept = [
                ln for ln in path.read_text(encoding="utf-8").splitlines() if _step(ln) <= start
            ]
        path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._sums: dict[str, float] = {}
        self._count = 0
        self._t0 = time.perf_counter()

    def add(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1

    def write(
        self, step: int, lr: float, batch_size: int, extra: Mapping[str, Any] | None = None
    ) -> dict[str, float]:
        now = time.perf_counter()
        record: dict[str, float] = {"step": step}
        record.update({k: v / max(self._count, 1) for k, v in self._sums.items()})
        record["lr"] = lr
        record["samples_per_s"] = self._count * batch_size / max(now - self._t0, 1e-9)
        self._file.write(json.dumps({**record, **(extra or {})}) + "\n")
        self._file.flush()
        self._sums, self._count, self._t0 = {}, 0, now
        return record

    def close(self) -> None:
        self._file.close()


def refuse_lerobot(source: Policy | str | Path) -> None:
    """Raise TrainError when ``source`` is a LeRobot checkpoint (or a policy built from one):
    envactor runs those (eval, serve, run) but does not train them."""
    from envactor.interop.lerobot import lerobot_checkpoint_dir

    if isinstance(source, Policy):
        if source.name != "lerobot":
            return
        where = f"policy {source.config.get('lerobot', {}).get('path', '(built in memory)')}"
    else:
        folder = lerobot_checkpoint_dir(source)
        if folder is None:
            return
        where = str(source)
    raise TrainError(
        f"{where} is a LeRobot checkpoint: LeRobot policies are acting-only in envactor (eval, "
        "serve, run); train it with LeRobot itself (lerobot-train), or train an envactor policy "
        "(flow, act, mlp_chunk) on the dataset"
    )


def _build(
    source: Policy | str | Path, device: str, overrides: Sequence[str], dataset: Dataset
) -> Policy:
    if isinstance(source, Policy):
        if overrides:
            raise TrainError("overrides apply to a policy YAML or name, not to a built Policy")
        return source.to(device)
    fitted = [*dataset_overrides(source, overrides, dataset), *overrides]
    return build_policy(source, device=device, overrides=fitted)


def _resume_point(out: Path, resume: bool) -> Path | None:
    if resume:
        found = latest_checkpoint(out)
        if found is None:
            raise TrainError(
                f"resume=True but {out / CHECKPOINTS_DIR} holds no step_* checkpoint to resume from"
            )
        return found
    existing = list_checkpoints(out)
    if existing:
        raise TrainError(
            f"{out / CHECKPOINTS_DIR} already holds checkpoints ({existing[-1].name}, ...); "
            "pass resume=True to continue that run, or choose another out_dir"
        )
    return None


def _warn_if_changed(state: TrainerState, cfg: TrainConfig) -> None:
    saved = state.meta.get("config", {})
    changed = [
        f"{k}: {saved.get(k)} -> {getattr(cfg, k)}"
        for k in _RESUME_CHECKED
        if saved.get(k) != getattr(cfg, k)
    ]
    if changed:
        warnings.warn(
            f"resuming {state.path} with changed settings ({'; '.join(changed)}); the result "
            "will differ from an uninterrupted run",
            RuntimeWarning,
            stacklevel=3,
        )


def train(
    policy_or_yaml: Policy | str | Path,
    dataset_root: str | Path | Dataset,
    *,
    out_dir: str | Path,
    steps: int = 10_000,
    batch_size: int = 64,
    lr: float = 3e-4,
    weight_decay: float = 1e-4,
    warmup_steps: int = 100,
    grad_clip: float | None = 1.0,
    save_every: int = 1000,
    seed: int = 0,
    resume: bool = False,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    progress: bool = True,
    log_every: int = 10,
    stop_at: int | None = None,
    keep_normalizer: bool = False,
) -> TrainResult:
    """Train a policy on a dataset's chunk windows; see docs/training.md.

    ``policy_or_yaml`` is a built ``Policy``, a policy YAML, a registered name or a checkpoint
    directory (fine-tuning). A registered name takes its input features (cameras included) and
    action dimension from the dataset unless ``overrides`` give them, and its encoder is sized
    for them; a YAML or a checkpoint gives its own, checked against the dataset. Normalizer
    stats come from the dataset's ``meta/stats.json`` where it has the ones a key's mode needs,
    else are computed from the data (unless ``keep_normalizer``); the first log record says
    which, and they travel in every checkpoint. EMA is on when the policy's
    ``ema_decay`` param is set. ``resume`` continues from ``out_dir/checkpoints/last`` and, on
    CPU with the same settings, reproduces an uninterrupted run exactly. ``stop_at`` ends this
    call after that step (with a checkpoint) while the schedule still spans ``steps``.
    """
    cfg = TrainConfig(
        steps, batch_size, lr, weight_decay, warmup_steps, grad_clip, save_every, seed, log_every
    )
    if stop_at is not None and stop_at < 1:
        raise ValueError(f"stop_at must be >= 1, got {stop_at}")
    refuse_lerobot(policy_or_yaml)
    out = Path(out_dir)
    resume_dir = _resume_point(out, resume)
    dataset = open_dataset(dataset_root)
    torch.manual_seed(cfg.seed)  # before building: initial weights depend on the seed
    policy = _trainable_policy(policy_or_yaml, device, overrides, dataset)
    state = load_trainer_state(resume_dir) if resume_dir is not None else None
    modes, sources = _normalizer_stats(policy, dataset, state, cfg, keep_normalizer)
    if progress:
        print(f"normalizer: {stats_summary(modes, sources)}", file=sys.stderr)
    windows = ChunkWindows(
        dataset,
        policy.params.horizon,
        list(policy.input_features),
        n_obs_steps=policy.n_obs_steps,
    )
    optimizer = _optimizer(policy, cfg)
    policy.learn_mode.init(optimizer, grad_clip=cfg.grad_clip)
    rng = np.random.default_rng(cfg.seed)
    start = 0
    if state is not None:
        restore_trainer_state(state, policy, optimizer, rng)
        start = state.step
    policy.learn_mode.step = start
    end = cfg.steps if stop_at is None else min(int(stop_at), cfg.steps)
    out.mkdir(parents=True, exist_ok=True)
    run = _Steps(policy, optimizer, windows, rng, cfg, out, _stats_record(modes, sources))
    run.ckpt = state.path if state is not None else None
    run.run(start, end, progress)
    if run.ckpt is None:  # nothing to do: resumed at or past the end
        raise TrainError(f"{out}: no checkpoint written")
    sps = len(run.losses) * cfg.batch_size / run.busy if run.busy > 0 else 0.0
    final = None if run.last_record is None else float(run.last_record["loss"])
    return TrainResult(
        policy, out, max(end, start), run.ckpt / POLICY_DIR, out / LOG_FILE, run.losses, sps,
        final, sources,
    )  # fmt: skip


def _trainable_policy(
    source: Policy | str | Path, device: str, overrides: Sequence[str], dataset: Dataset
) -> Policy:
    """The policy to train, built for ``dataset`` and checked against it."""
    policy = _build(source, device, overrides, dataset)
    if not policy.trainable:
        raise TrainError(f"policy {policy.name!r} is not trainable (no _loss)")
    if not policy.config:
        raise TrainError(
            f"policy {policy.name!r} has no resolved config, so no checkpoint could be saved; "
            "build it with build_policy() or pass its YAML"
        )
    check_dataset(policy, dataset)
    return policy


def _normalizer_stats(
    policy: Policy,
    dataset: Dataset,
    state: TrainerState | None,
    cfg: TrainConfig,
    keep_normalizer: bool,
) -> tuple[dict[str, NormMode], dict[str, str]]:
    """Set ``policy.normalizer`` (the resumed run's, the policy's own or the dataset's); each
    key's mode and where its stats came from."""
    modes = norm_modes(policy)
    sources = dict.fromkeys(modes, "checkpoint")
    if state is not None:
        _warn_if_changed(state, cfg)
        if state.normalizer is None:
            raise TrainError(f"{state.path / POLICY_DIR}: checkpoint has no normalizer stats")
        policy.normalizer = state.normalizer
    elif not (keep_normalizer and policy.normalizer is not None):
        policy.normalizer, sources = training_stats(dataset, modes)
    return modes, sources


def _optimizer(policy: Policy, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise TrainError(f"policy {policy.name!r} has no trainable parameters")
    # foreach: one multi-tensor kernel per op (the default on CUDA; ~15% faster steps on CPU)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


@dataclass
class _Steps:
    """The step loop: its inputs, and what it leaves (losses, busy seconds, the last log record,
    the last checkpoint)."""

    policy: Policy
    optimizer: torch.optim.Optimizer
    windows: ChunkWindows
    rng: np.random.Generator
    cfg: TrainConfig
    out: Path
    normalizer_record: dict[str, Any]
    ckpt: Path | None = None
    losses: list[float] = field(default_factory=list)
    last_record: dict[str, float] | None = None
    busy: float = 0.0

    def run(self, start: int, end: int, progress: bool) -> None:
        """Steps ``start`` to ``end``, logged every ``log_every`` and saved every
        ``save_every`` steps and at ``end``."""
        from tqdm.auto import tqdm

        log = _Log(self.out / LOG_FILE, start)
        bar = tqdm(
            total=end,
            initial=start,
            disable=not progress,
            desc=f"train {self.policy.name}",
            unit="step",
            dynamic_ncols=True,
        )
        try:
            for step in range(start, end):
                lr_now = self._step(step, log)
                done = step + 1
                if done % self.cfg.log_every == 0 or done == end:
                    rec = self._write(log, done, lr_now)
                    bar.set_postfix(
                        loss=f"{rec['loss']:.4g}",
                        samples_s=f"{rec['samples_per_s']:.0f}",
                        refresh=False,
                    )
                bar.update(1)
                if done % self.cfg.save_every == 0 or done == end:
                    self.ckpt = save_training_checkpoint(
                        self.out, done, self.policy, self.optimizer, self.rng, asdict(self.cfg)
                    )
        finally:
            bar.close()
            log.close()

    def _step(self, step: int, log: _Log) -> float:
        """One optimizer step (scheduled lr, a sampled batch); returns the lr it used."""
        t0 = time.perf_counter()
        lr_now = lr_at(step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_now
        stats = self.policy.learn_mode.forward(self.windows.sample(self.rng, self.cfg.batch_size))
        self.busy += time.perf_counter() - t0
        if not math.isfinite(stats["loss"]):
            raise TrainError(f"step {step + 1}: loss is {stats['loss']}; lower lr or check data")
        self.losses.append(stats["loss"])
        log.add(stats)
        return lr_now

    def _write(self, log: _Log, done: int, lr_now: float) -> dict[str, float]:
        # the call's first record says where the normalizer stats came from
        extra = {"normalizer": self.normalizer_record} if self.last_record is None else None
        self.last_record = log.write(done, lr_now, self.cfg.batch_size, extra)
        return self.last_record
