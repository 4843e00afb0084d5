"""The previous chunk's unexecuted remainder as a guidance target: padded prefix and soft mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envactor.chunking.masks import Schedule, prefix_weights
from envactor.policy.boundary import ObservationError


def build_prefix(
    prev_chunk: np.ndarray | Sequence[np.ndarray],
    batch: int,
    delay: int | Sequence[int],
    s: int | None,
    action_shape: tuple[int, int],
    schedule: Schedule = "exp",
) -> tuple[np.ndarray, np.ndarray]:
    """(Y (B, H, A), W (B, H)) from each env's remainder ``prev_chunk[b]`` of shape (L_b, A).

    Y is the remainder shifted to index 0 and padded with its last action; W is the soft mask
    (RTC paper Eq. 5, docs/chunking.md) with d = ``delay[b]`` (clamped to L_b) and s = ``s`` or
    ``H - L_b``, and zero wherever the remainder has no action.
    """
    horizon, adim = action_shape
    rows = list(prev_chunk)
    if len(rows) != batch:
        raise ObservationError(f"prev_chunk has {len(rows)} rows for a batch of {batch}")
    delays = (
        [int(delay)] * batch if isinstance(delay, int | np.integer) else [int(x) for x in delay]
    )
    if len(delays) != batch:
        raise ObservationError(f"got {len(delays)} delays for a batch of {batch}")
    prefix = np.zeros((batch, horizon, adim), dtype=np.float32)
    weights = np.zeros((batch, horizon), dtype=np.float32)
    for b, row in enumerate(rows):
        row = np.asarray(row, dtype=np.float32)
        if row.ndim != 2 or row.shape[1] != adim or row.shape[0] > horizon:
            raise ObservationError(
                f"prev_chunk[{b}]: expected shape (L<={horizon}, {adim}), got {row.shape}"
            )
        n = row.shape[0]
        prefix[b, :n] = row
        if n:
            prefix[b, n:] = row[-1]
        s_b = horizon - n if s is None else s
        weights[b] = prefix_weights(min(delays[b], n), min(s_b, horizon), horizon, schedule)
        weights[b, n:] = 0.0
    return prefix, weights
