"""The server's per-frame fast path refuses exactly what the general checks refuse.

The entry-count budget is skipped only where it could never refuse (the 2 x bytes bound, tight
at its edge), a request parser prepared once reads the executor plugins once (not per guided
request or per connection), the finiteness count agrees with ``np.isfinite(...).all()``, and
the encoder writes the bytes it wrote before. Loopback sockets only, bounded loops.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from serving_util import S, mlp_policy, serving
from test_server_robustness import ws

from envactor.policy.specs import FeatureSpec
from envactor.runtime.executors import EXECUTORS
from envactor.runtime.serving import requests
from envactor.runtime.serving.batching import _rows
from envactor.runtime.serving.requests import (
    RequestError,
    RequestParser,
    _Budget,
    all_finite,
    decode_frame,
)
from envactor.runtime.serving.server import policy_metadata
from envactor.runtime.serving.wire import WireError, packb, unpackb


def entries(frame: bytes) -> int:
    """List/map entries the budget counts for ``frame`` (decoded with a budget that never
    runs out)."""
    budget = _Budget(1 << 40)
    msgpack.unpackb(frame, list_hook=budget.lists, object_hook=budget.maps, raw=False)
    return budget.limit - budget.left


def frames() -> list[bytes]:
    """Worst cases for entries per byte (empty containers in containers), openpi requests, and
    seeded random nestings."""
    rng = np.random.default_rng(0)

    def nest(depth: int) -> Any:
        kind = rng.integers(0, 4) if depth < 4 else 3
        n = int(rng.integers(0, 6))
        if kind == 0:
            return [nest(depth + 1) for _ in range(n)]
        if kind == 1:
            return {f"k{i}": nest(depth + 1) for i in range(n)}
        if kind == 2:
            return []
        return int(rng.integers(-3, 300))

    out = [msgpack.packb([[]] * n) for n in (1, 15, 16, 1000)]
    out += [msgpack.packb([{}] * 15), msgpack.packb({str(i): [] for i in range(15)})]
    out += [msgpack.packb([[[[]]]]), msgpack.packb([[1, 2]] * 4)]
    out += [packb({S: np.zeros(3, np.float32), "prev_action": np.zeros((4, 1), np.float32)})]
    out += [msgpack.packb(nest(0)) for _ in range(200)]
    return out


def test_a_frame_never_holds_twice_its_bytes_in_entries_and_the_bound_is_tight() -> None:
    counts = [(entries(f), len(f)) for f in frames()]
    assert all(n <= 2 * size - 1 for n, size in counts), max(counts)
    assert entries(msgpack.packb([[]] * 15)) == 31 == 2 * 16 - 1  # 16 bytes: the bound itself


def test_the_count_is_skipped_only_where_it_cannot_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = msgpack.packb([[]] * 15)  # 16 bytes, 31 entries
    made: list[int] = []
    budget = requests._Budget

    def counting(limit: int) -> Any:
        made.append(limit)
        return budget(limit)

    monkeypatch.setattr(requests, "_Budget", counting)
    assert decode_frame(frame, max_items=32) == [[]] * 15 and made == []  # 2 x 16 <= 32
    assert decode_frame(frame, max_items=31) == [[]] * 15 and made == [31]  # counted: fits
    with pytest.raises(WireError, match="more than 30 list/map entries"):
        decode_frame(frame, max_items=30)
    image = packb({"cam": np.zeros((64, 64, 3), np.uint8), S: np.ones(3, np.float32)})
    got = decode_frame(image)  # small frames: no count, same objects
    assert made == [31, 30] and got["cam"].shape == (64, 64, 3) and got[S].tolist() == [1, 1, 1]
    with pytest.raises(WireError, match="extension type 7"):
        decode_frame(msgpack.packb(msgpack.ExtType(7, b"x")))
    bad = {b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "<f4", b"shape": [True]}
    with pytest.raises(WireError, match="list of at most 32 integers >= 0, got \\[True\\]"):
        decode_frame(msgpack.packb({"x": bad}))


def test_parser_reads_the_executor_plugins_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    names = EXECUTORS.names

    def counted() -> list[str]:
        calls.append(1)
        return names()

    monkeypatch.setattr(EXECUTORS, "names", counted)
    parser = RequestParser({S: FeatureSpec(shape=(3,))}, (8, 1))
    obs = {S: np.zeros(3, np.float32), "prev_action": np.zeros((4, 1), np.float32)}
    for i in range(20):
        req = parser.request({**obs, "est_delay": i % 3, "rtc": {"executor": "blend"}}, i)
        assert req.executor == "blend" and req.guidance is not None
    assert parser.request({S: obs[S]}, 0).guidance is None  # plain: no names needed
    assert len(calls) == 1  # once for the parser, not once per guided request
    with pytest.raises(RequestError, match=r"rtc\['executor'\]: expected one of \[.*'rtc'"):
        parser.request({**obs, "rtc": {"executor": "nope"}}, 0)
    with pytest.raises(RequestError, match="expected one of"):
        parser.request({**obs, "rtc": {"executor": ["rtc"]}}, 0)  # unhashable, still refused
    assert len(calls) == 1  # a refused name costs no plugin scan either
    monkeypatch.setitem(EXECUTORS._items, "late_blend", EXECUTORS.get("blend"))
    assert parser.request({**obs, "rtc": {"executor": "late_blend"}}, 0).executor == "late_blend"


def test_metadata_lists_the_executors_without_a_scan_per_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    names = EXECUTORS.names

    def counted() -> list[str]:
        calls.append(1)
        return names()

    monkeypatch.setattr(EXECUTORS, "names", counted)
    assert policy_metadata(mlp_policy(), ["x", "y"])["executors"] == ["x", "y"] and not calls
    with serving(mlp_policy()) as srv:
        for _ in range(5):
            with ws(srv.port) as conn:
                conn.send(packb({S: np.zeros(3, np.float32)}))
                assert unpackb(conn.recv(timeout=10))["actions"].shape == (8, 1)
    assert len(calls) == 1  # when the server started


def test_finiteness_count_agrees_with_isfinite_all() -> None:
    rng = np.random.default_rng(0)
    for size in (0, 1, 14, 700, 1 << 16, (1 << 16) + 1):
        for dtype in (np.float16, np.float32, np.float64):
            arr = rng.normal(size=size).astype(dtype)
            assert all_finite(arr) is True
            for bad in (np.nan, np.inf, -np.inf):
                if size:
                    spoiled = arr.copy()
                    spoiled[int(rng.integers(size))] = bad
                    assert all_finite(spoiled) is False
    assert all_finite(np.full((1, 50, 14), 3e38, np.float32)) is True  # large but finite


def test_one_row_is_copied_like_a_stack() -> None:
    row = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), np.float32).reshape(2, 3)
    assert not row.flags.writeable  # as decoded from a frame
    one = _rows([row])
    np.testing.assert_array_equal(one, np.stack([row]))
    assert one.shape == (1, 2, 3) and one.flags.writeable and one.flags.c_contiguous
    assert not np.shares_memory(one, row)
    two = _rows([row, row + 1])
    np.testing.assert_array_equal(two, np.stack([row, row + 1]))


def test_encoder_writes_the_same_bytes_for_any_layout() -> None:
    def before(obj: Any) -> Any:  # the encoding as it was: a C-order copy, the shape as a list
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(),
                b"dtype": obj.dtype.str, b"shape": list(obj.shape)}  # fmt: skip

    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for arr in (base, base.T, base[:, ::2], np.asfortranarray(base), base[0, 0, 0:0],
                np.array(2.5, np.float64), np.ones((2, 2), bool)):  # fmt: skip
        assert packb({"a": arr}) == msgpack.packb({"a": arr}, default=before, use_bin_type=True)
