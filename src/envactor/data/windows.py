"""Chunk windows: each frame of each episode as one training sample with an H-step action chunk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from envactor.data.format import DatasetError
from envactor.data.open import Dataset, open_dataset

__all__ = ["ChunkWindows"]


class ChunkWindows:
    """Sample ``i`` = (episode ``e``, frame ``t``): the observation at ``t`` and ``actions[t:t+H]``.

    Past the episode end the chunk repeats the episode's last action and ``action_is_pad`` marks
    those steps (losses ignore them). With ``n_obs_steps = n > 1`` each observation key holds the
    history of frames ``t-n+1 .. t`` (oldest first), the episode's first frame repeated before
    its start: what the acting boundary hands the policy after a reset. The selected observation
    keys and the actions of the whole dataset are loaded into memory once, so a batch is a
    vectorized gather; for image datasets that is ``frames * image bytes`` of RAM.

    Args:
        dataset: a dataset (``LeRobotDataset``, ``EpisodeDataset``) or its root directory.
        horizon: H, actions per chunk.
        obs_keys: observation columns to return (default: every ``observation.*`` column).
        action_key: the action column.
        n_obs_steps: observation frames per sample (the policy's ``n_obs_steps``).
    """

    def __init__(
        self,
        dataset: Dataset | str | Path,
        horizon: int,
        obs_keys: Sequence[str] | None = None,
        *,
        action_key: str = "action",
        n_obs_steps: int = 1,
    ) -> None:
        ds = open_dataset(dataset)
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        keys = (
            list(obs_keys)
            if obs_keys is not None
            else [k for k in ds.data_keys if k.startswith("observation.")]
        )
        if not keys:
            raise DatasetError(f"{ds.root}: no observation.* columns in {ds.data_keys}")
        unknown = [k for k in [*keys, action_key] if k not in ds.features]
        if unknown:
            raise DatasetError(f"{ds.info_path}: keys {unknown} not among features {ds.data_keys}")
        self.dataset, self.horizon = ds, int(horizon)
        self.obs_keys, self.action_key = keys, action_key
        parts: dict[str, list[np.ndarray]] = {k: [] for k in [*keys, action_key]}
        for ep in ds.iter_episodes(list(parts)):
            for k, v in ep.items():
                parts[k].append(v)
        self._data = {k: np.concatenate(v) for k, v in parts.items()}
        lengths = ds.episode_lengths
        self.episode_index = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        self.frame_index = (
            np.arange(ds.num_frames, dtype=np.int64) - ds.episode_starts[self.episode_index]
        )
        self._last = (ds.episode_starts + lengths - 1)[self.episode_index]
        self._first = ds.episode_starts[self.episode_index]
        self._offsets = np.arange(self.horizon, dtype=np.int64)
        self.n_obs_steps = int(n_obs_steps)
        self._obs_offsets = np.arange(1 - self.n_obs_steps, 1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.episode_index)

    def locate(self, i: int) -> tuple[int, int]:
        """(episode, frame) of sample ``i``."""
        return int(self.episode_index[i]), int(self.frame_index[i])

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Samples ``indices`` stacked: obs keys ``(B, ...)`` (``(B, n_obs_steps, ...)`` when
        above 1), action ``(B, H, A)``, ``action_is_pad`` ``(B, H)`` bool."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"sample indices must be in [0, {n}), got {idx.min()}..{idx.max()}")
        steps = idx[:, None] + self._offsets[None, :]
        last = self._last[idx][:, None]
        if self.n_obs_steps > 1:
            first = self._first[idx][:, None]  # episode start: its first frame repeats
            frames = np.maximum(idx[:, None] + self._obs_offsets[None, :], first)
        else:
            frames = idx
        out: dict[str, np.ndarray] = {k: self._data[k][frames] for k in self.obs_keys}
        out[self.action_key] = self._data[self.action_key][np.minimum(steps, last)]
        out["action_is_pad"] = steps > last
        return out

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.batch([i]).items()}

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` samples drawn uniformly with replacement from ``rng``."""
        return self.batch(rng.integers(0, len(self), size=batch_size))

    def __repr__(self) -> str:
        return (
            f"ChunkWindows(samples={len(self)}, horizon={self.horizon}, "
            f"n_obs_steps={self.n_obs_steps}, obs_keys={self.obs_keys})"
        )
