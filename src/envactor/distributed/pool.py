"""``WorkerPool``: rollout workers on Ray (or one in process), episode accounting, replacement.

``collect(episode_ids)`` hands out the ids in calls of ``per_call`` episodes to idle workers
and consumes each worker's event stream. Accounting is exact: every requested id ends up
either finished (returned once) or dropped (it had started on a worker that died). A dead
worker is replaced by a fresh one with a new id; the ids it had not started go back to the
queue, so nothing is lost or counted twice. An error raised by a worker's code (bad weights,
a bug) is not a crash: it propagates, naming the worker.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envactor.distributed import handles
from envactor.distributed.store import STORE_NAME, WeightStore, store_actor
from envactor.distributed.worker import Episode, RolloutWorker
from envactor.runtime.actor import EpisodesStarted

__all__ = ["CollectReport", "WorkerPool", "init_ray"]


@dataclass
class CollectReport:
    """What a ``collect`` call got: finished episodes (sorted by id), dropped ids, failures."""

    requested: int
    episodes: list[Episode]
    dropped: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return len(self.episodes)


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join ``address`` (an existing cluster: ``auto`` or ``host:port``) or start a local Ray
    instance sized to this machine. A no-op when Ray is already initialized."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 logging_level=logging.WARNING)  # fmt: skip


class WorkerPool:
    """``num_workers`` Ray actors (0: one ``RolloutWorker`` in this process, no Ray).

    ``worker_kwargs`` are ``RolloutWorker``'s keyword arguments (policy files, task, executor,
    ...); the pool adds the store. ``faults`` maps a worker id to ``die_after_steps`` (tests).
    """

    def __init__(
        self,
        num_workers: int,
        worker_kwargs: Mapping[str, Any],
        *,
        store: Any = None,
        store_name: str = STORE_NAME,
        cpus_per_worker: float = 1.0,
        max_replacements: int | None = None,
        faults: Mapping[str, int] | None = None,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.local = num_workers == 0
        self.kwargs = dict(worker_kwargs)
        self.faults = dict(faults or {})
        self.cpus = float(cpus_per_worker)
        self.replaced = 0
        self.max_replacements = (
            4 * max(num_workers, 1) if max_replacements is None else max_replacements
        )
        self._made = 0
        if store is None:
            store = handles.local(WeightStore()) if self.local else store_actor(store_name)
        self.store = store
        self.workers: dict[str, Any] = {}
        for _ in range(max(num_workers, 1)):
            self._spawn()

    def _spawn(self) -> str:
        name = f"w{self._made}"
        self._made += 1
        kwargs = {**self.kwargs, "store": self.store, "die_after_steps": self.faults.get(name)}
        if self.local:
            self.workers[name] = RolloutWorker(name, **kwargs)
        else:
            import ray

            cls = ray.remote(num_cpus=self.cpus, max_restarts=0)(RolloutWorker)
            self.workers[name] = cls.remote(name, **kwargs)
        return name

    def wait_ready(self) -> list[dict[str, Any]]:
        """Every worker's ``info()`` (blocks until all are built)."""
        if self.local:
            return [w.info() for w in self.workers.values()]
        import ray

        return list(ray.get([w.info.remote() for w in self.workers.values()]))

    def status(self) -> dict[str, Any]:
        """The store's view: learner version, per-worker version, staleness and steps."""
        out: dict[str, Any] = handles.get(self.store.status.remote())
        return out

    # ------------------------------------------------------------------ collection
    def collect(
        self, episode_ids: Iterable[int], *, seed: int = 0, per_call: int | None = None
    ) -> CollectReport:
        """Run ``episode_ids`` across the workers; see the module docstring."""
        ids = [int(i) for i in episode_ids]
        if len(set(ids)) != len(ids):
            raise ValueError("episode_ids must be distinct")
        if self.local:
            return self._collect_local(ids, seed)
        return self._collect_ray(ids, seed, per_call or 2 * int(self.kwargs.get("num_envs", 4)))

    def _collect_local(self, ids: list[int], seed: int) -> CollectReport:
        (worker,) = self.workers.values()
        eps = [ev for ev in worker.rollout(ids, seed) if isinstance(ev, Episode)]
        return CollectReport(len(ids), sorted(eps, key=lambda e: e.episode))

    def _collect_ray(self, ids: list[int], seed: int, per_call: int) -> CollectReport:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        queue = deque(ids)
        report = CollectReport(len(ids), [])
        finished: dict[int, Episode] = {}
        idle = list(self.workers)
        active: dict[Any, tuple[str, list[int], set[int]]] = {}
        while queue or active:
            while idle and queue:
                name = idle.pop()
                take = [queue.popleft() for _ in range(min(per_call, len(queue)))]
                gen = self.workers[name].rollout.remote(take, seed)
                active[gen] = (name, take, set())
            ready, _ = ray.wait(list(active), num_returns=1)
            for gen in ready:
                name, take, started = active[gen]
                try:
                    event = ray.get(next(gen))  # type: ignore[arg-type]
                except StopIteration:
                    del active[gen]
                    missing = [i for i in take if i not in finished]
                    if missing:
                        raise RuntimeError(
                            f"worker {name} ended its call without episodes {missing}"
                        ) from None
                    idle.append(name)
                    continue
                except RayTaskError as exc:  # the worker's code raised: not a crash, report it
                    raise RuntimeError(f"worker {name} failed: {exc.cause!r}") from exc
                except RayActorError as exc:
                    del active[gen]
                    lost = self._replace(name, exc)
                    report.failures.append(lost)
                    report.dropped += sorted(i for i in started if i not in finished)
                    queue.extendleft(reversed([i for i in take if i not in started]))
                    idle.append(self._spawn())
                    continue
                if isinstance(event, EpisodesStarted):
                    started.update(event.episodes)
                elif isinstance(event, Episode):
                    if event.episode in finished or event.episode not in take:
                        raise RuntimeError(
                            f"worker {name} returned episode {event.episode} twice or unasked"
                        )
                    finished[event.episode] = event
        report.episodes = [finished[i] for i in sorted(finished)]
        return report

    def _replace(self, name: str, exc: BaseException) -> str:
        self.replaced += 1
        if self.replaced > self.max_replacements:
            raise RuntimeError(
                f"{self.replaced} worker failures (max_replacements={self.max_replacements}); "
                f"last: worker {name}: {exc}"
            ) from exc
        del self.workers[name]
        self.store.forget.remote(name)
        return f"worker {name} died: {type(exc).__name__}"

    def shutdown(self) -> None:
        """Stop the workers (Ray actors are killed; the local one closes its envs)."""
        for w in self.workers.values():
            if self.local:
                w.close()
            else:
                import ray

                ray.kill(w)
        self.workers.clear()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
