"""The openpi msgpack wire codec: round trips, exact byte-key layout, refusals and limits."""

from __future__ import annotations

import re
from typing import Any

import msgpack
import numpy as np
import pytest

from envactor.runtime.serving.wire import WireError, packb, unpackb

ALLOWED = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64"]  # fmt: skip


def openpi_default(obj: Any) -> Any:
    """How openpi's client packs numpy (written from its documented format, for the test)."""
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str,
                b"shape": obj.shape}  # fmt: skip
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def frame(dtype: str, data: bytes = b"\0" * 8, shape: list[int] | None = None) -> bytes:
    arr = {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape or [1]}
    return msgpack.packb({"x": arr}, use_bin_type=True)


@pytest.mark.parametrize("name", ALLOWED)
def test_round_trip_every_allowed_dtype(name: str) -> None:
    a = (np.arange(24).reshape(2, 3, 4) % 7).astype(name)
    out = unpackb(packb({"a": a, "t": a.T, "e": np.zeros((0, 3), name)}))
    for key, want in (("a", a), ("t", a.T), ("e", np.zeros((0, 3), name))):
        assert out[key].dtype == np.dtype(name) and out[key].shape == want.shape
        np.testing.assert_array_equal(out[key], want)
    assert not out["a"].flags.writeable  # a view of the frame's bytes: no copy


def test_numpy_scalars_keep_their_dtype() -> None:
    out = unpackb(packb({"i": np.int16(-7), "b": np.bool_(True), "f": np.float32(1.5)}))
    assert type(out["i"]) is np.int16 and out["i"] == -7
    assert type(out["b"]) is np.bool_ and bool(out["b"]) is True
    assert type(out["f"]) is np.float32 and out["f"] == 1.5


def test_decodes_a_frame_packed_the_openpi_way() -> None:
    obs = {"observation.state": np.array([0.5, -1.0, 2.0], np.float32), "prompt": "pick",
           "step": np.int64(3)}  # fmt: skip
    raw = msgpack.packb(obs, default=openpi_default, use_bin_type=True)
    out = unpackb(raw)
    assert set(out) == {"observation.state", "prompt", "step"}
    np.testing.assert_array_equal(out["observation.state"], [0.5, -1.0, 2.0])
    assert out["prompt"] == "pick" and out["step"] == 3 and type(out["step"]) is np.int64


def test_encoded_layout_is_openpis_exactly() -> None:
    a = np.array([[1.0, 2.0]], np.float32)
    plain = msgpack.unpackb(packb({"actions": a, "n": np.uint8(4)}), raw=False)
    assert set(plain) == {"actions", "n"}  # ordinary keys stay strings
    arr = plain["actions"]
    assert set(arr) == {b"__ndarray__", b"data", b"dtype", b"shape"}  # bin (bytes) keys
    assert arr[b"__ndarray__"] is True and arr[b"dtype"] == "<f4" and arr[b"shape"] == [1, 2]
    assert arr[b"data"] == a.tobytes()
    assert plain["n"] == {b"__npgeneric__": True, b"data": 4, b"dtype": "|u1"}


@pytest.mark.parametrize(
    "value",
    [np.array([object()], dtype=object), np.array([1 + 2j]), np.zeros(2, "V4"),
     np.array(["a"]), np.zeros(1, "M8[s]"), np.complex64(1j), np.zeros(2, ">f4")],
    ids=["object", "complex", "void", "str", "datetime", "complex-scalar", "big-endian"],
)  # fmt: skip
def test_encode_refuses_disallowed_dtypes(value: Any) -> None:
    with pytest.raises(WireError, match="not allowed on the wire"):
        packb({"x": value})


@pytest.mark.parametrize("dtype", ["|O", "<c16", "|V8", "<M8[s]", ">f8", "[('a', 'O')]", "f8,O"])
def test_decode_refuses_disallowed_dtypes(dtype: str) -> None:
    with pytest.raises(WireError, match=re.escape(f"dtype {dtype!r} is not allowed")):
        unpackb(frame(dtype))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (frame("<f4", b"\0" * 8, [3]), r"shape \[3\] of float32 needs 12 bytes, got 8"),
        (frame("<f4", b"\0" * 4, [-1]), "list of at most 32 integers >= 0"),
        (frame("<f4", b"", [1] * 33), "list of at most 32 integers >= 0"),
        (msgpack.packb({b"__ndarray__": True, b"data": "text", b"dtype": "<f4", b"shape": [1]}),
         "'data' must be bytes"),
        (b"\xc1garbage", "could not decode the frame as msgpack"),
        (msgpack.packb([1, 2]) + b"x", "could not decode the frame as msgpack"),
        (msgpack.packb(msgpack.ExtType(5, b"xx")), "extension type 5 is not allowed"),
        (b"\x91" * 5000 + b"\xc0", "nested deeper"),
        (msgpack.packb({1: 2}), "could not decode"),
    ],
    ids=["size", "negative-dim", "too-many-dims", "data-not-bytes", "garbage", "extra-data",
         "ext-type", "deep", "int-key"],
)  # fmt: skip
def test_decode_refuses_malformed_frames(raw: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        unpackb(raw)


def test_decode_limits_lengths() -> None:
    with pytest.raises(WireError, match="could not decode"):
        unpackb(msgpack.packb(list(range(100))), max_array_len=10)
    with pytest.raises(WireError, match="could not decode"):
        unpackb(msgpack.packb("x" * 100), max_str_len=10)
    with pytest.raises(WireError, match="expected a binary frame"):
        unpackb("text")  # type: ignore[arg-type]


def test_encode_refuses_unknown_objects() -> None:
    with pytest.raises(TypeError, match="cannot encode set"):
        packb({"x": {1, 2}})
