"""Normalizer statistics of a dataset: its ``meta/stats.json`` where it has them, else one
streaming pass over its episodes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from envactor.data.format import DatasetError
from envactor.data.open import Dataset
from envactor.normalize import ALL_STATS, MODE_STATS, Normalizer, NormalizerError, NormMode
from envactor.streaming_stats import StatsAccumulator

__all__ = ["COMPUTED", "NOT_NEEDED", "STORED", "dataset_stats", "training_stats"]

STORED = "meta/stats.json"
COMPUTED = "computed from the data"
NOT_NEEDED = "no stats needed"


def dataset_stats(
    dataset: Dataset, modes: Mapping[str, NormMode], *, sketch_size: int = 8192
) -> Normalizer:
    """A ``Normalizer`` with ``modes`` and stats over every frame of ``dataset``.

    Each key's stats reduce over all frames of all episodes (for ``"action"``: per-frame
    actions, not chunks), reading one episode at a time. Keys whose mode needs no stats
    (``identity``, ``image``) are not read. mean/std/min/max are exact (float64); q01/q99 come
    from ``StatsAccumulator``'s sketch (exact below ``sketch_size`` frames, always within the
    data's range). A value that is not finite or not within float32 range raises
    ``DatasetError`` naming the data file, episode, frame, key and element; an outlier that would
    make a ``mean_std``/``min_max`` input nearly constant is a RuntimeWarning naming where it is.
    """
    unknown = [k for k in modes if k not in dataset.features]
    if unknown:
        raise DatasetError(
            f"{dataset.info_path}: no column for normalized keys {unknown}; "
            f"features are {dataset.data_keys}"
        )
    needed = {k: m for k, m in modes.items() if MODE_STATS.get(m)}
    stats = {}
    if needed:
        acc = StatsAccumulator(needed, sketch_size=sketch_size)
        locations = dataset.meta.episodes
        for i, episode in enumerate(dataset.iter_episodes(list(needed))):
            try:
                acc.update(episode, where=f"{locations[i].data_file} (episode {i})")
            except NormalizerError as e:
                raise DatasetError(str(e)) from None
        stats = acc.finalize().stats
    return Normalizer(modes, stats)


def training_stats(
    dataset: Dataset, modes: Mapping[str, NormMode], *, sketch_size: int = 8192
) -> tuple[Normalizer, dict[str, str]]:
    """The ``Normalizer`` a training run uses, and where each key's stats came from.

    A key takes the dataset's ``meta/stats.json`` (LeRobot's; v2.1 without it: its
    ``episodes_stats.jsonl``) when that holds the stats its mode needs (``mean_std``:
    mean/std, ``min_max``: min/max, ``quantile``: q01/q99) with the feature's shape; the others
    are computed by ``dataset_stats``. Sources are :data:`STORED`, :data:`COMPUTED` or
    :data:`NOT_NEEDED` (``identity``, ``image``: ``x / 255`` needs none).
    """
    stored = _stored_stats(dataset)
    stats: dict[str, dict[str, np.ndarray]] = {}
    sources: dict[str, str] = {}
    compute: dict[str, NormMode] = {}
    for key, mode in modes.items():
        if not MODE_STATS.get(mode):
            sources[key] = NOT_NEEDED
            continue
        found = _usable(stored.get(key, {}), mode, dataset, key)
        if found is None:
            compute[key] = mode
            sources[key] = COMPUTED
        else:
            stats[key] = found
            sources[key] = STORED
    if compute:
        stats.update(dataset_stats(dataset, compute, sketch_size=sketch_size).stats)
    try:
        return Normalizer(modes, stats), sources
    except NormalizerError as e:
        raise DatasetError(f"{dataset.root / 'meta' / 'stats.json'}: {e}") from None


def _stored_stats(dataset: Dataset) -> dict[str, dict[str, np.ndarray]]:
    """The dataset's stored stats; empty when it has none (no stats file at all)."""
    meta = dataset.root / "meta"
    if not (meta / "stats.json").is_file() and not (meta / "episodes_stats.jsonl").is_file():
        return {}
    return dataset.stats()


def _usable(
    stored: Mapping[str, np.ndarray], mode: NormMode, dataset: Dataset, key: str
) -> dict[str, np.ndarray] | None:
    """``stored``'s stats of ``key`` in the feature's shape, when ``mode``'s are all there."""
    shape = dataset.features[key].shape
    size = int(np.prod(shape, dtype=np.int64))
    out: dict[str, np.ndarray] = {}
    for name in ALL_STATS:
        value = stored.get(name)
        if value is not None and value.size == size:
            out[name] = value.reshape(shape)  # LeRobot stores a scalar feature's stats as [1]
    if any(name not in out for name in MODE_STATS[mode]):
        return None
    return out
