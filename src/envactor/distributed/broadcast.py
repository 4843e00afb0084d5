"""Versioned weight streaming, pull model: one ``ray.put`` per version, workers fetch on change.

Learner side, ``WeightPublisher.publish(policy_or_state_dict)``: pack the acting weights of the
components the learner owns as numpy arrays, ``ray.put`` them ONCE, hand the reference to the
store actor. Worker side, ``WeightSubscriber.check()``: one store round trip; only when the
version changed, fetch the object (zero-copy on the same node), validate every name and shape
against the live policy, copy in place with ``load_state_dict_into`` (device and dtype cast),
set ``policy.weight_version`` and acknowledge.

Which components a worker takes: every tensor the learner sends must land in the worker's
policy (after the optional ``name_map``); an unmatched name is an error. A component the learner
does not send keeps its weights; a component it sends must be sent whole.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from envactor.distributed import handles
from envactor.distributed.payload import WeightPayload, pack, policy_weights, unpack
from envactor.policy.base import Policy
from envactor.weights import WeightsError, check_state_dict

__all__ = ["PublishInfo", "SyncEvery", "WeightPublisher", "WeightSubscriber", "parse_sync_every"]


@dataclass
class PublishInfo:
    """One publish: version, bytes put in the object store, seconds spent packing + putting."""

    version: int
    nbytes: int
    put_s: float
    object_id: str


class WeightPublisher:
    """Learner side. ``components``: the ones the learner owns (default: all of the policy's)."""

    def __init__(self, store: Any, *, components: Iterable[str] | None = None) -> None:
        self.store = store
        self.components = None if components is None else list(components)
        self.version = -1
        self.puts = 0
        self._keep: Any = None  # the latest ref: the learner owns the object, keep it alive

    def publish(
        self,
        weights: Policy | Mapping[str, torch.Tensor],
        version: int | None = None,
        *,
        wait: bool = True,
    ) -> PublishInfo:
        """Publish ``weights`` (a policy's acting weights or a flat state dict) as ``version``
        (default: the previous + 1). ``wait`` blocks until the store has recorded it."""
        t0 = time.perf_counter()
        version = self.version + 1 if version is None else int(version)
        sd = (
            policy_weights(weights, self.components, copy=False)
            if isinstance(weights, Policy)
            else dict(weights)
        )
        # ray.put copies the bytes into the object store; in process the payload must be a
        # snapshot of its own, or later training would change a published version
        local = handles.is_local(self.store)
        payload = pack(sd, version, copy=local)
        ref = handles.put(payload, local_mode=local)  # the one put of this version
        self.puts += 1
        done = self.store.publish.remote(version, [ref], payload.nbytes)
        if wait:
            handles.get(done)
        self.version, self._keep = version, ref
        return PublishInfo(version, payload.nbytes, time.perf_counter() - t0, ref.hex())


@dataclass(frozen=True)
class SyncEvery:
    """When a worker checks for new weights: before every chunk request, every ``n`` env-loop
    steps, or at each episode start."""

    kind: str  # "chunk" | "steps" | "episode"
    n: int = 1


def parse_sync_every(spec: str | int | SyncEvery) -> SyncEvery:
    """``"chunk"``, ``"episode"``, ``"steps:N"`` or an int N (every N steps)."""
    if isinstance(spec, SyncEvery):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ValueError(f"sync_every: a step count must be >= 1, got {spec}")
        return SyncEvery("steps", spec)
    text = str(spec).strip()
    if text in ("chunk", "episode"):
        return SyncEvery(text)
    if text.startswith("steps:"):
        try:
            return parse_sync_every(int(text.split(":", 1)[1]))
        except ValueError:
            pass
    raise ValueError(
        f"sync_every: expected 'chunk', 'episode', 'steps:N' or an int N >= 1, got {spec!r}"
    )


class WeightSubscriber:
    """Worker side: pull the latest version into ``policy`` in place when it changed."""

    def __init__(
        self,
        policy: Policy,
        store: Any,
        worker: str,
        *,
        name_map: Mapping[str, str] | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.worker = worker
        self.name_map = dict(name_map) if name_map else None
        self.steps = 0  # env-steps done, reported to the store with each check
        self.loads: list[tuple[int, str]] = []  # (version, object id) of every load

    @property
    def version(self) -> int:
        """The version the policy acts with (-1 before the first load)."""
        return int(self.policy.weight_version) if self.loads else -1

    def check(self) -> bool:
        """One store round trip; load and acknowledge a newer version. True when loaded."""
        reply = handles.get(self.store.sync.remote(self.worker, self.version, self.steps))
        if reply is None:
            return False
        version, box = reply
        payload: WeightPayload = handles.get(box[0])
        self.load(payload)
        self.loads.append((version, box[0].hex()))
        self.store.ack.remote(self.worker, version)
        return True

    def pull(self) -> None:
        """``check()`` without the result (the executor's ``before_request`` hook)."""
        self.check()

    def load(self, payload: WeightPayload) -> None:
        """Validate the whole payload against the policy, then copy it in place."""
        sd = unpack(payload)
        load_partial(self.policy, sd, name_map=self.name_map, version=payload.version)


def load_partial(
    policy: Policy,
    state_dict: Mapping[str, torch.Tensor],
    *,
    name_map: Mapping[str, str] | None = None,
    version: int | None = None,
) -> list[str]:
    """Load the components ``state_dict`` covers; returns their names.

    Errors (nothing is copied): a source name that matches no tensor of the policy, or a
    component only partly covered. Components not mentioned keep their weights.
    """
    report = check_state_dict(policy.components, state_dict, strict=False, name_map=name_map)
    if report.unexpected:
        raise WeightsError(
            f"weights for policy {policy.name!r}: {len(report.unexpected)} tensors match no "
            f"tensor of its components {sorted(policy.components)}: {report.unexpected[:8]}"
            " (pass a name_map when the learner's component names differ)"
        )
    covered = sorted({n.split(".", 1)[0] for n in report.loaded})
    partial = {
        c: [m for m in report.missing if m.startswith(c + ".")]
        for c in covered
        if any(m.startswith(c + ".") for m in report.missing)
    }
    if partial:
        raise WeightsError(
            f"weights for policy {policy.name!r} cover components {covered} only in part; "
            f"missing tensors: {partial}"
        )
    policy.load_weights(state_dict, version=version, name_map=name_map, strict=False)
    return covered
