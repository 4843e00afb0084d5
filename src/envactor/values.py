"""Which numbers a dataset or a stats pass accepts: finite and within float32 range.

Policies run in float32, so a value a float32 cannot hold (NaN, +-inf, or ``|x|`` above
``FLOAT32_MAX``, which a float32 cast turns into inf) is refused wherever data enters: when a
dataset is written or read and when stats are computed. ``first_bad_value`` finds the first one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FLOAT32_MAX", "BadValue", "dim_label", "first_bad_value"]

FLOAT32_MAX = float(np.finfo(np.float32).max)


def dim_label(index: tuple[int, ...]) -> str:
    """`` dim 2`` for element 2 of a vector, `` dim [0, 2]`` of a matrix, ``""`` for a scalar."""
    if not index:
        return ""
    return f" dim {index[0]}" if len(index) == 1 else f" dim {list(index)}"


@dataclass(frozen=True)
class BadValue:
    """A value a float32 cannot hold: its ``row`` (frame), element ``index`` and the value."""

    row: int
    index: tuple[int, ...]
    value: float

    @property
    def dim(self) -> str:
        """`` dim 2`` or `` dim [0, 2]`` (empty for a scalar feature)."""
        return dim_label(self.index)

    def expected(self) -> str:
        """What was expected and what came, for an error message."""
        return (
            f"expected a finite value within float32 range (|x| <= {FLOAT32_MAX:.8g}), "
            f"found {self.value!r}"
        )


def first_bad_value(x: np.ndarray, *, allow_nan: bool = False) -> BadValue | None:
    """The first element (row-major) of ``x``, shaped ``(N, ...)``, that a float32 cannot hold.

    NaN, +-inf and ``|x| > FLOAT32_MAX`` are bad (NaN is allowed with ``allow_nan``); integer
    and bool arrays never are. None when every value is fine.
    """
    if not np.issubdtype(x.dtype, np.floating) or x.size == 0:
        return None
    x = x.reshape(1) if x.ndim == 0 else x
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(x) <= np.float32(FLOAT32_MAX))  # NaN compares False: bad here too
    if allow_nan:
        bad &= ~np.isnan(x)
    if not bad.any():
        return None
    pos = np.unravel_index(int(np.argmax(bad)), x.shape)
    return BadValue(int(pos[0]), tuple(int(i) for i in pos[1:]), float(x[pos]))
