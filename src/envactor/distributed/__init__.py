"""Distributed collection on Ray: rollout workers, versioned weight streaming, online learning.

Nothing here imports Ray at ``import envactor.distributed``; Ray loads when a pool with workers
starts. ``WorkerPool(0, ...)`` runs the same code in process, without Ray.

- ``WeightPublisher`` / ``WeightSubscriber`` / ``store_actor``: one ``ray.put`` per version,
  pulled by the workers when the version changes, loaded in place (``broadcast.py``).
- ``RolloutWorker`` (``worker.py``) and ``WorkerPool`` (``pool.py``): episodes by id, exact
  accounting, dead workers replaced.
- ``train_online`` (``dagger.py``): DAgger, ``envactor train-online``.
"""

from envactor.distributed.broadcast import (
    PublishInfo,
    SyncEvery,
    WeightPublisher,
    WeightSubscriber,
    load_partial,
    parse_sync_every,
)
from envactor.distributed.dagger import OnlineSettings, train_online
from envactor.distributed.payload import WeightPayload, pack, policy_weights, unpack
from envactor.distributed.pool import CollectReport, WorkerPool, init_ray
from envactor.distributed.store import STORE_NAME, WeightStore, store_actor
from envactor.distributed.worker import Episode, RolloutWorker, checkpoint_files, label_episode

__all__ = [
    "STORE_NAME",
    "CollectReport",
    "Episode",
    "OnlineSettings",
    "PublishInfo",
    "RolloutWorker",
    "SyncEvery",
    "WeightPayload",
    "WeightPublisher",
    "WeightStore",
    "WeightSubscriber",
    "WorkerPool",
    "checkpoint_files",
    "init_ray",
    "label_episode",
    "load_partial",
    "pack",
    "parse_sync_every",
    "policy_weights",
    "store_actor",
    "train_online",
    "unpack",
]
