"""Column values as a LeRobot v3.0 dataset stores them: which features are cameras, the checks
a value passes before it is written, and the Arrow layout of a column."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from envactor.data.format import DatasetError, Feature, require_pyarrow
from envactor.values import dim_label, first_bad_value

__all__ = ["checked_frames", "checked_values", "is_camera", "stored", "to_arrow"]


def is_camera(key: str, spec: Any) -> bool:
    """Whether feature ``key`` is stored as video: dtype ``video``/``image``, or ``uint8``
    ``(H, W, 3)`` named ``observation.image`` or ``observation.images.<camera>``."""
    dtype = spec.get("dtype") if isinstance(spec, Mapping) else getattr(spec, "dtype", None)
    shape = spec.get("shape") if isinstance(spec, Mapping) else getattr(spec, "shape", None)
    if dtype in ("video", "image"):
        return True
    return (
        (key == "observation.image" or key.startswith("observation.images."))
        and str(dtype) == "uint8"
        and len(tuple(shape or ())) == 3
        and tuple(shape or ())[-1] == 3
    )


def _shape_and_dtype(where: str, key: str, arr: np.ndarray, feat: Feature) -> np.dtype:
    if arr.ndim != 1 + len(feat.shape) or tuple(arr.shape[1:]) != feat.shape:
        raise DatasetError(
            f"{where}: {key!r} expected shape (T, {', '.join(map(str, feat.shape))}), "
            f"got {arr.shape}"
        )
    want = np.dtype(feat.dtype)
    if not np.can_cast(arr.dtype, want, casting="same_kind"):
        raise DatasetError(f"{where}: {key!r} expected dtype {want}, got {arr.dtype}")
    return want


def checked_frames(where: str, key: str, arr: np.ndarray, feat: Feature) -> np.ndarray:
    """Camera frames ``(T, H, W, 3)`` of ``feat``'s shape, as uint8."""
    return arr.astype(_shape_and_dtype(where, key, arr, feat), copy=False)


def checked_values(
    root: Path, where: str, key: str, arr: np.ndarray, feat: Feature, *, allow_nan: bool = False
) -> np.ndarray:
    """Numeric values ``(T, *shape)`` in ``feat``'s dtype: finite (NaN too when
    ``allow_nan``) and within that dtype's range, else an error naming frame, key and dim."""
    want = _shape_and_dtype(where, key, arr, feat)
    bad = first_bad_value(arr, allow_nan=allow_nan)
    if bad is not None:
        raise DatasetError(
            f"{root}: {where}, frame {bad.row}: key {key!r}{bad.dim}: {bad.expected()}"
        )
    with np.errstate(over="ignore"):
        out = arr.astype(want, copy=False)
    if want == np.float16 and np.isinf(out).any():
        pos = np.unravel_index(int(np.argmax(np.isinf(out))), out.shape)
        raise DatasetError(
            f"{root}: {where}, frame {pos[0]}: key {key!r}"
            f"{dim_label(tuple(int(i) for i in pos[1:]))}: expected |x| <= 65504 for a "
            f"float16 column, found {float(arr[pos])!r}"
        )
    return out


def stored(feature: Feature) -> Feature:
    """How a column is stored: shape ``()`` and ``(1,)`` as plain scalars (LeRobot's layout)."""
    return Feature((), feature.dtype) if feature.shape in ((), (1,)) else feature


def to_arrow(values: np.ndarray, feature: Feature) -> Any:
    pa = require_pyarrow()
    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    for n in reversed(feature.shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, n)
    return arr
