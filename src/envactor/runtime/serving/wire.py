"""The openpi wire format: msgpack with numpy arrays, safe to decode from an untrusted peer.

An ndarray travels as a map whose keys are msgpack *bin* (``b"..."``)::

    {b"__ndarray__": True, b"data": <raw C-order bytes>, b"dtype": <dtype.str>, b"shape": [...]}

a numpy scalar as ``{b"__npgeneric__": True, b"data": <python scalar>, b"dtype": <dtype.str>}``;
every other key is an ordinary string. Decoding wraps the received bytes without copying
(``np.ndarray(buffer=...)``, so arrays are read-only). Only bool, (u)int8-64 and float16/32/64
are accepted; object, void, complex, datetime and string dtypes are refused in both directions,
and nothing is ever unpickled. msgpack extension types are refused too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import numpy as np

__all__ = [
    "ALLOWED_DTYPES",
    "CLIENT_HEADER",
    "MAX_NDIM",
    "PROTOCOL",
    "WireError",
    "packb",
    "packer",
    "unpackb",
]

# envactor's protocol on top of openpi's format: in the server's metadata (``protocol``) and in
# the handshake header envactor's client sends, which gets it typed binary error replies
PROTOCOL = "envactor-ws/1"
CLIENT_HEADER = "X-Envactor-Protocol"

_NAMES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64")  # fmt: skip
ALLOWED_DTYPES: dict[str, np.dtype] = {}
"""Accepted dtype strings (``dtype.str`` as numpy writes it, and the plain names) -> dtype."""
for _name in _NAMES:
    _dt = np.dtype(_name)
    ALLOWED_DTYPES[_dt.str] = _dt
    ALLOWED_DTYPES[_name] = _dt
    ALLOWED_DTYPES["=" + _dt.str[1:]] = _dt
MAX_NDIM = 32
_ND = b"__ndarray__"
_NG = b"__npgeneric__"


class WireError(ValueError):
    """A frame that is not valid msgpack, or an array/scalar the format does not allow."""


def _allowed(dtype: np.dtype, where: str) -> np.dtype:
    if dtype.kind not in "biuf" or not dtype.isnative or dtype.str not in ALLOWED_DTYPES:
        raise WireError(
            f"{where}: dtype {dtype.str!r} ({dtype}) is not allowed on the wire; allowed: "
            f"{', '.join(_NAMES)}"
        )
    return dtype


_WIRE_STR = {dt: dt.str for dt in ALLOWED_DTYPES.values()}
"""Allowed dtype -> the ``dtype.str`` it travels as (one lookup instead of the checks)."""


def _encode(obj: Any) -> Any:
    """msgpack ``default`` hook: ndarray / numpy scalar -> the openpi map; anything else refused."""
    if isinstance(obj, np.ndarray):
        name = _WIRE_STR.get(obj.dtype)
        if name is None:  # refused (the error says which dtype and why), or an unusual alias
            name = _allowed(obj.dtype, "encode ndarray").str
        return {_ND: True, b"data": obj.tobytes(), b"dtype": name, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        dtype = _allowed(obj.dtype, "encode numpy scalar")
        return {_NG: True, b"data": obj.item(), b"dtype": dtype.str}
    raise TypeError(
        f"cannot encode {type(obj).__name__} on the wire; expected dict, list, str, bytes, "
        "int, float, bool, None, numpy array or numpy scalar"
    )


def packb(obj: Any) -> bytes:
    """``obj`` (dicts, lists, scalars, numpy arrays and scalars) as one msgpack frame."""
    out: bytes = msgpack.packb(obj, default=_encode, use_bin_type=True)
    return out


def packer() -> Callable[[Any], bytes]:
    """:func:`packb` with one reusable ``msgpack.Packer`` (the same bytes, without building a
    packer per frame); for one thread only (each server connection loop makes its own)."""
    pack: Callable[[Any], bytes] = msgpack.Packer(default=_encode, use_bin_type=True).pack
    return pack


def _dtype_of(value: Any, where: str) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or value not in ALLOWED_DTYPES:
        raise WireError(
            f"{where}: dtype {value!r} is not allowed on the wire; allowed: {', '.join(_NAMES)}"
        )
    return ALLOWED_DTYPES[value]


def _decode_ndarray(obj: Mapping[Any, Any]) -> np.ndarray:
    name = obj.get(b"dtype")
    dtype = ALLOWED_DTYPES.get(name) if type(name) is str else None
    if dtype is None:
        dtype = _dtype_of(name, "ndarray")  # a bytes name, or raises saying what came
    data, shape = obj.get(b"data"), obj.get(b"shape")
    if not isinstance(data, bytes):
        raise WireError(f"ndarray: 'data' must be bytes (msgpack bin), got {type(data).__name__}")
    dims = tuple(shape) if isinstance(shape, list | tuple) and len(shape) <= MAX_NDIM else None
    count = 1
    for n in dims or ():
        if type(n) is not int or n < 0:  # msgpack's integers are int; True is a bool
            dims = None
            break
        count *= n
    if dims is None:
        raise WireError(
            f"ndarray: 'shape' must be a list of at most {MAX_NDIM} integers >= 0, got {shape!r}"
        )
    if count * dtype.itemsize != len(data):
        raise WireError(
            f"ndarray: shape {list(dims)} of {dtype} needs {count * dtype.itemsize} bytes, "
            f"got {len(data)}"
        )
    return np.ndarray(dims, dtype, data)  # (shape, dtype, buffer): read-only, no copy


def _decode_generic(obj: Mapping[Any, Any]) -> np.generic:
    dtype = _dtype_of(obj.get(b"dtype"), "numpy scalar")
    data = obj.get(b"data")
    if not isinstance(data, bool | int | float):
        raise WireError(f"numpy scalar: 'data' must be a number, got {type(data).__name__}")
    try:
        value: np.generic = dtype.type(data)
    except (OverflowError, ValueError) as exc:
        raise WireError(f"numpy scalar: {data!r} does not fit {dtype}: {exc}") from None
    return value


def _object_hook(obj: dict[Any, Any]) -> Any:
    if _ND in obj and obj[_ND] is True:
        return _decode_ndarray(obj)
    if _NG in obj and obj[_NG] is True:
        return _decode_generic(obj)
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not allowed on the wire")


def unpackb(
    data: bytes,
    *,
    max_str_len: int = 1 << 20,
    max_array_len: int = 1 << 16,
    max_map_len: int = 1 << 12,
) -> Any:
    """One msgpack frame -> Python objects with numpy arrays (read-only views of ``data``).

    Raises WireError for anything malformed or not allowed (the message says what and where).
    Nesting depth is bounded by msgpack's own unpacker stack; binary payloads by the frame size.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected a binary frame (bytes), got {type(data).__name__}")
    try:
        return msgpack.unpackb(
            data,
            object_hook=_object_hook,
            ext_hook=_refuse_ext,
            raw=False,
            strict_map_key=True,  # str and bytes keys only (openpi's bin keys are bytes)
            max_str_len=max_str_len,
            max_array_len=max_array_len,
            max_map_len=max_map_len,
        )
    except WireError:
        raise
    except msgpack.StackError:
        raise WireError("frame is nested deeper than the msgpack unpacker allows") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = str(exc) or type(exc).__name__
        raise WireError(f"could not decode the frame as msgpack: {detail}") from None
