"""Prefix weights W: worked values, schedules, clamping, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from envactor.chunking.masks import prefix_weights, prefix_weights_torch


def test_worked_values_h50_s25_d6() -> None:
    w = prefix_weights(6, 25, 50)
    assert w.shape == (50,) and w.dtype == np.float32
    head = [1.0] * 6 + [0.8767, 0.7645, 0.6627, 0.5706, 0.4876, 0.4130]
    np.testing.assert_allclose(w[:12], head, atol=1e-4)
    np.testing.assert_allclose(w[23:25], [0.0061, 0.0015], atol=1e-4)
    assert np.all(w[25:] == 0.0)
    assert np.all(np.diff(w) <= 0.0)  # non-increasing


def test_worked_values_h50_s35_d5() -> None:
    w = prefix_weights(5, 35, 50)
    expected = [1.0] * 5 + [0.7841, 0.6030, 0.4526, 0.3295, 0.2303, 0.1522, 0.0928, 0.0498]
    expected += [0.0211, 0.0050] + [0.0] * 35
    np.testing.assert_allclose(w, expected, atol=1e-4)


def test_worked_values_small() -> None:
    np.testing.assert_allclose(
        prefix_weights(2, 3, 8), [1, 1, 0.4876, 0.1888, 0.0413, 0, 0, 0], atol=1e-4
    )
    np.testing.assert_allclose(
        prefix_weights(0, 4, 8), [0.5706, 0.2871, 0.1145, 0.0258, 0, 0, 0, 0], atol=1e-4
    )


def test_exp_formula_at_one_index() -> None:
    # H=10, s=2, d=3: c_4 = (10 - 2 - 4) / (10 - 2 - 3 + 1) = 4/6
    c = 4 / 6
    assert prefix_weights(3, 2, 10)[4] == pytest.approx(c * math.expm1(c) / math.expm1(1), abs=1e-7)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("linear", [1, 1, 0.75, 0.5, 0.25, 0, 0, 0]),  # c_i = (5 - i) / 4
        ("ones", [1, 1, 1, 1, 1, 0, 0, 0]),
        ("zeros", [1, 1, 0, 0, 0, 0, 0, 0]),
        ("exp", [1, 1, 0.4876, 0.1888, 0.0413, 0, 0, 0]),
    ],
)
def test_schedules(schedule: str, expected: list[float]) -> None:
    np.testing.assert_allclose(prefix_weights(2, 3, 8, schedule), expected, atol=1e-4)  # type: ignore[arg-type]


def test_d_beyond_remainder_keeps_frozen_prefix() -> None:
    # d = 6 > H - s = 5: the overlap is empty, every frozen action stays tied.
    np.testing.assert_array_equal(prefix_weights(6, 3, 8), [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(prefix_weights(6, 3, 8, "ones"), [1, 1, 1, 1, 1, 1, 0, 0])


def test_clamping() -> None:
    np.testing.assert_array_equal(prefix_weights(20, 0, 8), np.ones(8))  # d clamped to H
    np.testing.assert_array_equal(prefix_weights(0, 20, 8), np.zeros(8))  # s clamped to H
    np.testing.assert_array_equal(prefix_weights(3, 20, 8), [1, 1, 1, 0, 0, 0, 0, 0])
    # s = 0, d = 0, H = 1: c_0 = 1 / 2 -> exp value
    assert prefix_weights(0, 0, 1)[0] == pytest.approx(0.5 * math.expm1(0.5) / math.expm1(1))


def test_numpy_integers_accepted_and_result_is_fresh() -> None:
    w = prefix_weights(np.int64(2), np.int32(3), np.int16(8))  # type: ignore[arg-type]
    np.testing.assert_allclose(w, prefix_weights(2, 3, 8))
    w[:] = 7.0  # a caller may write into its copy without touching the cache
    assert prefix_weights(2, 3, 8)[0] == 1.0


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        ((-1, 3, 8), ValueError, "d (inference delay) must be >= 0, got -1"),
        ((1, -2, 8), ValueError, "s (execution horizon) must be >= 0, got -2"),
        ((1, 2, 0), ValueError, "H (prediction horizon) must be >= 1, got 0"),
        ((2.5, 3, 8), TypeError, "got float 2.5"),
        ((True, 3, 8), TypeError, "got bool True"),
        ((1, "3", 8), TypeError, "got str '3'"),
        ((1, 3, 8.0), TypeError, "got float 8.0"),
    ],
)
def test_errors(args: tuple[object, ...], exc: type[Exception], words: str) -> None:
    with pytest.raises(exc) as info:
        prefix_weights(*args)  # type: ignore[arg-type]
    assert words in str(info.value)


def test_unknown_schedule() -> None:
    with pytest.raises(ValueError, match=r"one of exp, linear, ones, zeros; got 'cosine'"):
        prefix_weights(1, 2, 8, "cosine")  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", ["exp", "linear", "ones", "zeros"])
def test_torch_twin_matches_numpy(schedule: str) -> None:
    for d, s, H in [(6, 25, 50), (0, 4, 8), (6, 3, 8), (9, 9, 8)]:
        t = prefix_weights_torch(d, s, H, schedule)  # type: ignore[arg-type]
        assert t.dtype == torch.float32 and t.shape == (H,) and t.device.type == "cpu"
        np.testing.assert_array_equal(t.numpy(), prefix_weights(d, s, H, schedule))  # type: ignore[arg-type]


def test_torch_twin_float64_is_not_rounded_to_float32() -> None:
    t64 = prefix_weights_torch(2, 3, 8, dtype=torch.float64, device="cpu")
    assert t64.dtype == torch.float64
    assert t64[2].item() == pytest.approx(0.75 * math.expm1(0.75) / math.expm1(1), abs=1e-15)


def test_torch_twin_validates() -> None:
    with pytest.raises(TypeError, match="d \\(inference delay\\) must be an integer"):
        prefix_weights_torch(1.0, 2, 8)  # type: ignore[arg-type]
