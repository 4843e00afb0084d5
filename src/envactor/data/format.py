"""Shared pieces of the dataset code: the column ``Feature`` type, ``DatasetError``, helpers.

The layout itself is LeRobot's (``lerobot_format``). pyarrow is imported on first use only.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

CODEBASE_VERSION = "v3.0"  # the LeRobot dataset format envactor writes
DTYPES = ("float32", "float64", "float16", "uint8", "int32", "int64", "bool")


class DatasetError(ValueError):
    """A dataset that cannot be written or read as declared; the message names the file."""


def require_pyarrow() -> Any:
    """The ``pyarrow`` module (with ``pyarrow.parquet`` loaded); a clear error when missing."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "envactor datasets need pyarrow; install it with `pip install envactor[data]`"
        ) from e
    return pyarrow


@dataclass(frozen=True)
class Feature:
    """One column: per-frame ``shape`` (``()`` for scalars) and numpy ``dtype`` name.

    ``names`` optionally names the entries of a 1-D feature, in order (LeRobot's ``names``:
    the motors of ``observation.state`` and ``action``, e.g. ``shoulder_pan.pos``); it is
    metadata, not part of a feature's identity (two features that differ only in names
    compare equal).
    """

    shape: tuple[int, ...]
    dtype: str
    names: tuple[str, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise DatasetError(f"dtype {self.dtype!r}: expected one of {DTYPES}")
        if any(not isinstance(n, int) or n <= 0 for n in self.shape):
            raise DatasetError(f"shape {list(self.shape)}: expected positive integers")
        if self.names is not None:
            names = tuple(self.names)
            if len(self.shape) != 1 or len(names) != self.shape[0]:
                raise DatasetError(
                    f"names {list(names)}: expected one name per entry of a 1-D feature of "
                    f"shape {list(self.shape)}"
                )
            if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
                raise DatasetError(f"names {list(names)}: expected distinct non-empty strings")
            object.__setattr__(self, "names", names)

    @classmethod
    def of(cls, value: Any, where: str) -> Feature:
        """From a ``Feature``, a ``FeatureSpec``-like object (``shape``, ``dtype``) or a dict."""
        try:
            if isinstance(value, Feature):
                return value
            if isinstance(value, Mapping):
                shape, dtype = value["shape"], value["dtype"]
                names = entry_names(value, shape) if isinstance(shape, Sequence) else None
            else:
                shape, dtype = value.shape, value.dtype
                names = getattr(value, "names", None)
            if not isinstance(shape, Sequence) or isinstance(shape, str):
                raise DatasetError(f"shape: expected a list of integers, found {shape!r}")
            return cls(tuple(shape), str(dtype), None if names is None else tuple(names))
        except (KeyError, AttributeError) as e:
            raise DatasetError(f"{where}: expected 'shape' and 'dtype', missing {e}") from None
        except DatasetError as e:
            raise DatasetError(f"{where}: {e}") from None

    def to_json(self) -> dict[str, Any]:
        """The ``meta/info.json`` entry (LeRobot's keys: dtype, shape, names)."""
        names = list(self.names) if self.names is not None else None
        return {"dtype": self.dtype, "shape": list(self.shape), "names": names}

    def arrow_type(self) -> pa.DataType:
        """Arrow type of the column: the scalar type wrapped in one fixed-size list per dim."""
        pa = require_pyarrow()
        t = pa.bool_() if self.dtype == "bool" else pa.from_numpy_dtype(np.dtype(self.dtype))
        for n in reversed(self.shape):
            t = pa.list_(t, n)
        return t


def entry_names(spec: Mapping[str, Any], shape: Sequence[int]) -> tuple[str, ...] | None:
    """The entry names an ``info.json`` feature declares for a 1-D ``shape``, or None.

    LeRobot writes a list (``["shoulder_pan.pos", ...]``); older datasets a mapping with one
    list (``{"motors": [...]}``). Anything else (image axes, a length that does not match,
    repeated names) is not a naming of the entries and gives None.
    """
    names = spec.get("names")
    if isinstance(names, Mapping) and len(names) == 1:
        names = next(iter(names.values()))
    if (
        len(shape) == 1
        and isinstance(names, list)
        and len(names) == shape[0]
        and all(isinstance(n, str) and n for n in names)
        and len(set(names)) == len(names)
    ):
        return tuple(names)
    return None


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``; a missing or malformed file is a ``DatasetError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: missing; is {path.parent.parent} a dataset (LeRobot v3.0 or v2.1)?"
        ) from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read JSON: {e}") from e


def envactor_version() -> str:
    """The installed envactor version (recorded in ``meta/info.json``)."""
    try:
        return importlib.metadata.version("envactor")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
