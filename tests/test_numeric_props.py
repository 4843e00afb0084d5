"""Property tests (hypothesis): normalizer round trips and prefix-weight bounds/monotonicity.

Derandomized with moderate example counts, so CI runs the same cases every time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from envactor.chunking import masks  # noqa: E402
from envactor.normalize import Normalizer, NormalizerError  # noqa: E402

PROPS = settings(max_examples=150, deadline=None, derandomize=True)

# magnitudes from 1e-12 to 1e6 and exact zero: tiny std / ranges are the hard cases
scales = st.one_of(
    st.just(0.0),
    st.floats(-12, 6).map(lambda e: float(10.0**e)),
)
# ordinary values, and huge ones up to 1e37 (the Normalizer refuses stats whose folded float32
# constants would overflow, e.g. a feature constant at 1e31 with std 0)
centers = st.one_of(
    st.floats(-1e6, 1e6),
    st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(6, 37)).map(lambda p: p[0] * 10.0 ** p[1]),
)


@st.composite
def stats_and_inputs(draw: Any) -> tuple[str, dict[str, list[float]], float, np.ndarray]:
    """A mode, its stats for a feature of 1-3 elements, eps, and inputs (2-6 rows)."""
    mode = draw(st.sampled_from(["mean_std", "min_max", "quantile", "identity", "image"]))
    dim = draw(st.integers(1, 3))
    centre = [draw(centers) for _ in range(dim)]
    spread = [draw(scales) for _ in range(dim)]
    eps = draw(st.sampled_from([1e-8, 1e-6, 1e-3]))
    if mode == "mean_std":
        stats = {"mean": centre, "std": spread}
    elif mode in ("min_max", "quantile"):
        lo, hi = ("min", "max") if mode == "min_max" else ("q01", "q99")
        stats = {lo: centre, hi: [c + s for c, s in zip(centre, spread, strict=True)]}
    else:
        stats = {}
    rows = draw(st.integers(2, 6))
    # inputs near the stats (u in [-50, 50] scales around the centre) and anywhere in +-1e6
    near = st.floats(-50, 50)
    x = np.empty((rows, dim))
    for r in range(rows):
        for c in range(dim):
            if mode == "image":
                x[r, c] = draw(st.floats(0, 255))
            elif draw(st.booleans()):
                x[r, c] = centre[c] + draw(near) * (spread[c] + eps)
            else:
                x[r, c] = draw(st.floats(-1e6, 1e6))
    return mode, stats, eps, x


def centre_scale(
    mode: str, stats: dict[str, list[float]], eps: float, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """The affine map's centre c and scale s: normalize(x) = (x - c) / s + bias."""
    if mode == "image":
        return np.zeros(dim), np.full(dim, 255.0)
    if mode == "mean_std":
        return np.asarray(stats["mean"]), np.asarray(stats["std"]) + eps
    if mode in ("min_max", "quantile"):
        lo, hi = ("min", "max") if mode == "min_max" else ("q01", "q99")
        return np.asarray(stats[lo]), (np.asarray(stats[hi]) - np.asarray(stats[lo]) + eps) / 2
    return np.zeros(dim), np.ones(dim)


def round_trip_tolerance(
    mode: str, stats: dict[str, list[float]], eps: float, x: np.ndarray, dtype: Any
) -> np.ndarray:
    """Bound on |unnormalize(normalize(x)) - x| in ``dtype`` arithmetic.

    With ``u`` the unit roundoff of ``dtype``, centre ``c`` and scale ``s`` (std + eps, or
    (hi - lo + eps) / 2): the numpy path rounds y and x' once each, error <= 2u(|x| + |c| + s);
    the torch path folds (mul, add) into ``dtype`` and rounds each product and sum, error
    <= 6u|x| + 5u|c| + 5us. ``8u (|x| + |c| + s)`` bounds both, plus one ulp of the subnormal
    range times s where y underflows.
    """
    u = float(np.finfo(dtype).eps) / 2
    if mode == "identity":
        return np.zeros_like(x)
    c, s = centre_scale(mode, stats, eps, x.shape[-1])
    tiny = float(np.finfo(dtype).smallest_subnormal)
    return 8 * u * (np.abs(x) + np.abs(c) + s) + tiny * s


@PROPS
@given(case=stats_and_inputs(), dtype=st.sampled_from([np.float32, np.float64]))
def test_normalizer_round_trip_numpy_and_torch(
    case: tuple[str, dict[str, list[float]], float, np.ndarray], dtype: Any
) -> None:
    mode, stats, eps, x64 = case
    c, s = centre_scale(mode, stats, eps, x64.shape[-1])
    limit = float(np.finfo(np.float32).max)
    try:
        norm = Normalizer({"k": mode}, {"k": stats} if stats else {}, eps=eps)  # type: ignore[dict-item]
    except NormalizerError as e:
        # refused only when a folded float32 constant would overflow
        assert np.any(np.abs(c / s) > limit) or np.any(1 / s > limit), e
        event("refused: float32 constants overflow")
        return
    event(f"mode {mode}, huge centre: {bool(np.any(np.abs(c) > 1e6))}")
    x = x64.astype(dtype)
    # the property holds while the normalized value and x / s are representable in float32
    # (the folded torch form computes x * (1 / s) + (bias - c / s))
    assume(np.all(np.abs((x64 - c) / s) < 0.5 * limit) and np.all(np.abs(x64 / s) < 0.5 * limit))
    tol = round_trip_tolerance(mode, stats, eps, x.astype(np.float64), dtype)
    y = norm.normalize("k", x)
    assert y.dtype == dtype and np.isfinite(y).all()
    back = norm.unnormalize("k", y)
    assert back.dtype == dtype
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    assert np.all(err <= tol), (mode, stats, eps, x, back, err.max(), tol.min())
    xt = torch.from_numpy(x)
    yt = norm.normalize("k", xt)
    assert yt.dtype == xt.dtype and bool(torch.isfinite(yt).all())
    back_t = norm.unnormalize("k", yt).numpy()
    err_t = np.abs(back_t.astype(np.float64) - x.astype(np.float64))
    assert np.all(err_t <= tol), (mode, stats, eps, x, back_t, err_t.max(), tol.min())


@PROPS
@given(
    schedule=st.sampled_from(masks.SCHEDULES),
    H=st.integers(1, 300),
    d=st.integers(0, 320),
    s=st.integers(0, 320),
)
def test_prefix_weights_bounds_and_monotonicity(schedule: str, H: int, d: int, s: int) -> None:
    w = masks.prefix_weights(d, s, H, schedule)  # type: ignore[arg-type]
    assert w.shape == (H,) and w.dtype == np.float32
    assert np.all((w >= 0) & (w <= 1))
    dd, ss = min(d, H), min(s, H)  # clamped, as documented
    end = max(dd, H - ss)  # the frozen prefix wins when d > H - s
    np.testing.assert_array_equal(w[:dd], 1.0)
    np.testing.assert_array_equal(w[end:], 0.0)
    assert np.all(np.diff(w) <= 0), w  # non-increasing
    overlap = w[dd:end]
    if schedule in ("exp", "linear"):
        assert np.all((overlap > 0) & (overlap < 1))
        assert np.all(np.diff(overlap) < 0)  # strictly decreasing inside the soft overlap
    else:
        np.testing.assert_array_equal(overlap, 1.0 if schedule == "ones" else 0.0)
    t = masks.prefix_weights_torch(d, s, H, schedule)  # type: ignore[arg-type]
    np.testing.assert_array_equal(t.numpy(), w)
