"""The weight store: a small named Ray actor that holds the latest published weight version.

It never holds the weights themselves, only the object reference the learner's single
``ray.put`` returned (boxed in a list so Ray does not resolve it on the way in), so publishing
costs one small actor call whatever the number of workers, and every worker fetches the same
object. Workers call ``sync`` between chunks: one round trip that reports the version they run
and their progress and returns the new reference only when the version changed.

``WeightStore`` is a plain class (testable without Ray); ``store_actor`` wraps it as an actor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STORE_NAME", "WeightStore", "WorkerState", "store_actor"]

STORE_NAME = "envactor-weights"


@dataclass
class WorkerState:
    """What the store knows of one worker: the version it acts with, env-steps it reported,
    when it last called, and when it acknowledged each version it loaded."""

    version: int = -1
    steps: int = 0
    last_seen: float = 0.0
    acked_at: dict[int, float] = field(default_factory=dict)


class WeightStore:
    """Latest version + its object reference; per-worker acknowledgements and staleness."""

    def __init__(self) -> None:
        self.version = -1
        self._box: list[Any] | None = None
        self.nbytes = 0
        self.published_at: dict[int, float] = {}
        self.publishes = 0
        self.workers: dict[str, WorkerState] = {}

    def publish(self, version: int, box: list[Any], nbytes: int = 0) -> int:
        """Make ``box[0]`` (an ObjectRef) the latest weights, at ``version`` > the current."""
        if not isinstance(box, list) or len(box) != 1:
            raise TypeError(
                f"publish expects [object_ref] (a one-element list, so the store keeps the "
                f"reference unresolved), got {type(box).__name__}"
            )
        if int(version) <= self.version:
            raise ValueError(
                f"publish: version {version} is not newer than the store's {self.version}; "
                "versions must increase"
            )
        self.version, self._box, self.nbytes = int(version), box, int(nbytes)
        self.published_at[self.version] = time.time()
        self.publishes += 1
        return self.version

    def sync(self, worker: str, version: int, steps: int = 0) -> tuple[int, list[Any]] | None:
        """A worker's check: record its version and progress; the newer weights or None."""
        st = self.workers.setdefault(worker, WorkerState())
        st.version, st.steps, st.last_seen = int(version), int(steps), time.time()
        if self._box is None or self.version == int(version):
            return None
        return self.version, self._box

    def ack(self, worker: str, version: int) -> None:
        """A worker now acts with ``version``."""
        st = self.workers.setdefault(worker, WorkerState())
        st.version, st.last_seen = int(version), time.time()
        st.acked_at.setdefault(int(version), st.last_seen)

    def forget(self, worker: str) -> None:
        """Drop a worker that died or was retired from the staleness report."""
        self.workers.pop(worker, None)

    def status(self) -> dict[str, Any]:
        """Learner version, each worker's version/staleness/steps, and ack latencies (s)."""
        out: dict[str, Any] = {"version": self.version, "publishes": self.publishes,
                               "nbytes": self.nbytes, "workers": {}}  # fmt: skip
        for name, st in self.workers.items():
            t_pub = self.published_at.get(st.version)
            t_ack = st.acked_at.get(st.version)
            out["workers"][name] = {
                "version": st.version,
                "staleness": self.version - st.version if st.version >= 0 else None,
                "steps": st.steps,
                "ack_latency_s": None if t_pub is None or t_ack is None else t_ack - t_pub,
            }
        stale = [w["staleness"] for w in out["workers"].values() if w["staleness"] is not None]
        out["max_staleness"] = max(stale) if stale else None
        return out

    def acked_all(self, version: int, workers: list[str]) -> bool:
        """True when every one of ``workers`` has acknowledged ``version`` or newer."""
        return all(w in self.workers and self.workers[w].version >= int(version) for w in workers)


def store_actor(name: str = STORE_NAME, namespace: str | None = None) -> Any:
    """The named store actor: created on first use, else the running one (same name)."""
    import ray

    cls = ray.remote(num_cpus=0, max_restarts=-1)(WeightStore)
    return cls.options(name=name, namespace=namespace, get_if_exists=True).remote()
