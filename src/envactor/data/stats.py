"""Normalizer statistics of a dataset in one streaming pass over its episodes."""

from __future__ import annotations

from collections.abc import Mapping

from envactor.data.dataset import EpisodeDataset
from envactor.data.format import DatasetError
from envactor.normalize import MODE_STATS, Normalizer, NormMode, StatsAccumulator

__all__ = ["dataset_stats"]


def dataset_stats(
    dataset: EpisodeDataset, modes: Mapping[str, NormMode], *, num_bins: int = 2048
) -> Normalizer:
    """A ``Normalizer`` with ``modes`` and stats over every frame of ``dataset``.

    Each key's stats reduce over all frames of all episodes (for ``"action"``: per-frame
    actions, not chunks), reading one episode file at a time. Keys whose mode needs no stats
    (``identity``, ``image``) are not read. mean/std/min/max are exact; q01/q99 come from
    ``StatsAccumulator``'s histograms (within one bin width).
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
        acc = StatsAccumulator(needed, num_bins=num_bins)
        for episode in dataset.iter_episodes(list(needed)):
            acc.update(episode)
        stats = acc.finalize().stats
    return Normalizer(modes, stats)
