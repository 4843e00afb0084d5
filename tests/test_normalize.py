"""Normalizer modes against hand-computed numbers, round trips, streaming stats, persistence."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from envactor.normalize import Normalizer, NormalizerError
from envactor.streaming_stats import StatsAccumulator, compute_stats

MODES_ALL = {
    "s": "mean_std",
    "m": "min_max",
    "q": "quantile",
    "i": "identity",
    "img": "image",
}
STATS_ALL = {
    "s": {"mean": [2.0, -1.0], "std": [0.5, 4.0]},
    "m": {"min": [0.0, -3.0], "max": [4.0, 1.0]},
    "q": {"q01": [-2.0, 0.0], "q99": [6.0, 0.5]},
}


def make_all() -> Normalizer:
    return Normalizer(MODES_ALL, STATS_ALL)  # type: ignore[arg-type]


def test_mean_std_from_data_hand_computed() -> None:
    norm = compute_stats([{"x": np.array([[1.0], [2.0], [3.0]])}], {"x": "mean_std"})
    assert norm.stats["x"]["mean"] == pytest.approx([2.0], abs=1e-12)
    assert norm.stats["x"]["std"] == pytest.approx([0.816496580927726], abs=1e-12)  # sqrt(2/3)
    out = norm.normalize("x", np.array([[1.0], [2.0], [3.0]], dtype=np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-1.2247448714, 0.0, 1.2247448714], atol=1e-6)
    # inverse with eps: 1 * (0.8164965809 + 1e-8) + 2
    assert norm.unnormalize("x", np.array([1.0]))[0] == pytest.approx(2.8164965909, abs=1e-9)


def test_every_mode_hand_computed() -> None:
    n = make_all()
    np.testing.assert_allclose(n.normalize("s", np.array([3.0, 7.0])), [2.0, 2.0], atol=1e-7)
    # min_max: 2 * (x - min) / (max - min) - 1
    np.testing.assert_allclose(n.normalize("m", np.array([1.0, 1.0])), [-0.5, 1.0], atol=1e-7)
    np.testing.assert_allclose(n.normalize("m", np.array([0.0, -3.0])), [-1.0, -1.0], atol=1e-7)
    np.testing.assert_allclose(n.unnormalize("m", np.array([0.5, 0.0])), [3.0, -1.0], atol=1e-7)
    # quantile: not clipped outside [q01, q99]
    np.testing.assert_allclose(n.normalize("q", np.array([2.0, 0.25])), [0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(n.normalize("q", np.array([10.0, 1.0])), [2.0, 3.0], atol=1e-6)
    x = np.array([5.0, -7.0])
    assert n.normalize("i", x) is x
    img = n.normalize("img", np.array([0, 51, 255], dtype=np.uint8))
    assert img.dtype == np.float32
    np.testing.assert_allclose(img, [0.0, 0.2, 1.0], atol=1e-7)
    np.testing.assert_allclose(n.unnormalize("img", np.array([0.2], np.float32)), [51.0], atol=1e-4)
    timg = n.normalize("img", torch.tensor([0, 51, 255], dtype=torch.uint8))
    assert timg.dtype == torch.float32
    torch.testing.assert_close(timg, torch.tensor([0.0, 0.2, 1.0]))


def test_eps_applied_both_ways() -> None:
    n = Normalizer({"c": "mean_std"}, {"c": {"mean": [1.0], "std": [0.0]}}, eps=1e-3)
    assert n.normalize("c", np.array([1.001]))[0] == pytest.approx(1.0, abs=1e-9)
    assert n.unnormalize("c", np.array([1.0]))[0] == pytest.approx(1.001, abs=1e-12)


@pytest.mark.parametrize("key", list(MODES_ALL))
def test_round_trip_numpy_and_torch(key: str) -> None:
    n = make_all()
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(4, 5, 2)) * 3 + 1).astype(np.float32)
    if key == "img":
        x = rng.uniform(0, 255, size=(4, 5, 2)).astype(np.float32)
    back = n.unnormalize(key, n.normalize(key, x))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=1e-6, atol=1e-6)
    xt = torch.from_numpy(x)
    back_t = n.unnormalize(key, n.normalize(key, xt))
    assert back_t.dtype == torch.float32
    np.testing.assert_allclose(back_t.numpy(), x, rtol=1e-6, atol=1e-6)


def test_torch_matches_numpy_and_caches_stats() -> None:
    n = make_all()
    x = np.array([[3.0, 7.0], [2.0, -1.0]], dtype=np.float32)
    ref = n.normalize("s", x)
    out = n.normalize("s", torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)
    first = dict(n._torch_cache)
    n.normalize("s", torch.from_numpy(x))
    n.unnormalize("s", torch.from_numpy(x))
    assert len(n._torch_cache) == 2  # one fused (mul, add) pair per direction
    assert all(
        a is b for a, b in zip(first[next(iter(first))], next(iter(n._torch_cache.values())))
    )


def test_cache_filled_under_inference_mode_still_supports_autograd() -> None:
    n = make_all()
    with torch.inference_mode():
        n.normalize("s", torch.zeros(2))
    x = torch.tensor([3.0, 7.0], requires_grad=True)
    n.normalize("s", x).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.tensor([2.0, 0.25]))  # 1 / std


def test_torch_bfloat16() -> None:
    n = make_all()
    x = torch.tensor([[3.0, 7.0], [2.5, -1.0]], dtype=torch.bfloat16)
    out = n.normalize("s", x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.tensor([[2.0, 2.0], [1.0, 0.0]]))
    back = n.unnormalize("s", out)
    assert back.dtype == torch.bfloat16
    torch.testing.assert_close(back, x)


def test_unknown_key_is_an_error_naming_known_keys() -> None:
    n = make_all()
    with pytest.raises(NormalizerError, match=r"'observation.wrist'.*known keys: \['s', 'm'"):
        n.normalize("observation.wrist", np.zeros(2))
    with pytest.raises(KeyError):
        n.unnormalize("nope", torch.zeros(2))
    assert "s" in n and "nope" not in n
    assert n.keys == ["s", "m", "q", "i", "img"]
    assert n.modes["q"] == "quantile"


def test_normalize_batch() -> None:
    n = make_all()
    batch = {"s": np.array([3.0, 7.0]), "m": np.array([1.0, 1.0]), "task": "pick"}
    with pytest.raises(NormalizerError, match="'task'"):
        n.normalize_batch(batch)
    out = n.normalize_batch(batch, keys=["s", "m"])
    np.testing.assert_allclose(out["s"], [2.0, 2.0], atol=1e-7)
    np.testing.assert_allclose(out["m"], [-0.5, 1.0], atol=1e-7)
    assert out["task"] == "pick"
    with pytest.raises(NormalizerError, match=r"\['q'\] requested but not in the batch"):
        n.normalize_batch(batch, keys=["s", "q"])


def test_construction_errors() -> None:
    with pytest.raises(NormalizerError, match=r"key 'a' .*missing stat 'std'"):
        Normalizer({"a": "mean_std"}, {"a": {"mean": [0.0]}})
    with pytest.raises(NormalizerError, match="key 'a': stats disagree on shape"):
        Normalizer({"a": "min_max"}, {"a": {"min": [0.0, 1.0], "max": [2.0]}})
    with pytest.raises(NormalizerError, match="unknown mode 'zscore'"):
        Normalizer({"a": "zscore"}, {})  # type: ignore[dict-item]
    with pytest.raises(NormalizerError, match="stats given for key 'b' but no mode"):
        Normalizer({}, {"b": {"mean": [0.0]}})
    with pytest.raises(NormalizerError, match="expected max >= min"):
        Normalizer({"a": "min_max"}, {"a": {"min": [3.0], "max": [2.0]}})
    n = make_all()
    with pytest.raises(NormalizerError, match=r"expected trailing shape \(2,\).*\(4, 3\)"):
        n.normalize("s", np.zeros((4, 3)))


def test_streaming_matches_one_batch() -> None:
    rng = np.random.default_rng(1)
    # chunks drift and widen; 4000 frames < sketch_size, so the quantiles are exact
    chunks = [rng.normal(i * (-1) ** i, 1 + i, size=(400, 2, 3)) for i in range(10)]
    acc = StatsAccumulator({"x": "quantile", "y": "mean_std"})
    for c in chunks:
        acc.update({"x": c, "y": c[:, 0, 0], "ignored": np.zeros(3)})
    norm = acc.finalize()
    data = np.concatenate(chunks)
    sx, sy = norm.stats["x"], norm.stats["y"]
    for name, ref in [
        ("mean", data.mean(0)),
        ("std", data.std(0)),
        ("min", data.min(0)),
        ("max", data.max(0)),
    ]:
        np.testing.assert_allclose(sx[name], ref, rtol=1e-9, atol=0)
    np.testing.assert_allclose(sy["std"], data[:, 0, 0].std(), rtol=1e-9)
    assert sy["std"].shape == ()
    assert acc.rank_error("x") == 0
    for name, q in [("q01", 0.01), ("q99", 0.99)]:
        np.testing.assert_allclose(sx[name], np.quantile(data, q, axis=0), rtol=1e-12, atol=0)
    # the normalizer is usable as is, with every stat kept so the mode could change
    assert set(sx) == {"mean", "std", "min", "max", "q01", "q99"}
    assert norm.modes == {"x": "quantile", "y": "mean_std"}


def assert_within_rank_error(est: np.ndarray, data: np.ndarray, q: float, err: int) -> None:
    """``est`` (per column) lies between the exact order statistics ``err`` ranks around q."""
    ordered = np.sort(data, axis=0)
    pos = q * (len(data) - 1)
    lo = ordered[max(int(np.floor(pos)) - err, 0)]
    hi = ordered[min(int(np.ceil(pos)) + err, len(data) - 1)]
    assert np.all(lo <= est) and np.all(est <= hi), (q, err, est, lo, hi)


@pytest.mark.parametrize("sketch_size", [64, 512, 8192])
def test_quantiles_against_numpy_within_the_reported_rank_error(sketch_size: int) -> None:
    rng = np.random.default_rng(sketch_size)
    # heavy tails and very different scales per column; batches of an odd size
    data = rng.standard_t(3, size=(60_000, 4)) * [1.0, 10.0, 1e-3, 1e5]
    acc = StatsAccumulator({"x": "quantile"}, sketch_size=sketch_size)
    for i in range(0, len(data), 337):
        acc.update({"x": data[i : i + 337]})
    stats = acc.finalize().stats["x"]
    err = acc.rank_error("x")
    # the documented bound: at most (levels) * count / sketch_size ranks
    levels = np.log2(len(data) / sketch_size) + 1
    assert 0 < err <= levels * len(data) / sketch_size
    assert err / len(data) < {64: 0.2, 512: 0.02, 8192: 0.001}[sketch_size]
    for name, q in [("q01", 0.01), ("q99", 0.99)]:
        assert_within_rank_error(stats[name], data, q, err)


def test_one_outlier_cannot_move_the_quantiles() -> None:
    """The issue's case: one finite 3e38 in one frame of 4800 float32 frames."""
    rng = np.random.default_rng(10)
    data = rng.normal(size=(4800, 3)).astype(np.float32)
    data[1234, 1] = 3e38
    wide = data.astype(np.float64)
    for sketch_size in (8192, 256):  # exact, and a sketch that compacts many times
        acc = StatsAccumulator({"x": "quantile"}, sketch_size=sketch_size)
        for i in range(0, 4800, 100):
            acc.update({"x": data[i : i + 100]}, where=f"episode {i // 100}")
        s = acc.finalize().stats["x"]
        err = acc.rank_error("x")
        assert (err == 0) == (sketch_size == 8192)
        for name, q in [("q01", 0.01), ("q99", 0.99)]:
            assert np.all(wide.min(0) <= s[name]) and np.all(s[name] <= wide.max(0))
            assert_within_rank_error(s[name], wide, q, err)
            if err == 0:
                np.testing.assert_allclose(s[name], np.quantile(wide, q, axis=0), rtol=1e-12)
        assert err <= 0.02 * len(data)  # rank within 2% of the frames: q01 and q99 stay apart
        assert np.all(s["q01"] < -1.5) and np.all(s["q99"] > 1.5)
        # moments in float64: finite and equal to numpy's float64 ones
        np.testing.assert_allclose(s["mean"], wide.mean(0), rtol=1e-12)
        np.testing.assert_allclose(s["std"], wide.std(0), rtol=1e-12)
        assert s["max"][1] == np.float32(3e38) and np.isfinite(s["std"]).all()
    # quantile mode normalizes the bulk of dim 1 as it does the clean dims
    norm = acc.finalize()
    out = norm.normalize("x", data[:100])
    assert 0.3 < np.std(out[:, 1]) < 0.7  # scale (q99 - q01) / 2 ~ 2.3 for N(0, 1)


def test_outlier_that_flattens_a_mean_std_input_is_a_warning_naming_it() -> None:
    rng = np.random.default_rng(11)
    data = rng.normal(size=(4800, 3)).astype(np.float32)
    data[1234, 1] = 3e38
    acc = StatsAccumulator({"x": "mean_std", "a": "min_max"})
    for i in range(0, 4800, 100):
        acc.update({"x": data[i : i + 100], "a": data[i : i + 100, 0]}, where=f"ep {i // 100}")
    with pytest.warns(RuntimeWarning) as caught:
        acc.finalize()
    assert len(caught) == 1  # only dim 1 of x; dims 0, 2 and "a" are healthy
    msg = str(caught[0].message)
    assert "key 'x' dim 1" in msg and "3e+38 at ep 12, frame 34" in msg and "'quantile'" in msg
    # a constant feature with one outlier loses nothing: no warning
    flat = np.zeros((200, 1))
    flat[7] = 1e30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_stats([{"c": flat}], {"c": "mean_std"})


@pytest.mark.parametrize(
    ("value", "found"),
    [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf"), (1e39, "1e+39"), (-3.5e38, "-3.5e+38")],
)
def test_values_a_float32_cannot_hold_are_refused_with_frame_and_dim(
    value: float, found: str
) -> None:
    acc = StatsAccumulator({"x": "mean_std"})
    acc.update({"x": np.zeros((5, 2, 3))})
    bad = np.zeros((4, 2, 3))
    bad[2, 1, 0] = value
    with pytest.raises(
        NormalizerError,
        match=rf"^batch 1, frame 2: key 'x' dim \[1, 0\]: expected a finite value within "
        rf"float32 range \(\|x\| <= 3.4028235e\+38\), found {re.escape(found)}$",
    ):
        acc.update({"x": bad})
    with pytest.raises(NormalizerError, match=r"^batch 0, frame 0: key 'v' dim 1: .*found"):
        compute_stats([{"v": np.array([[0.0, value]])}], {"v": "min_max"})
    with pytest.raises(NormalizerError, match=r"^ep 3, frame 1: key 's': .*found"):
        StatsAccumulator({"s": "quantile"}).update({"s": np.array([0.0, value])}, where="ep 3")
    # the largest float32 itself is data
    edge = np.array([[np.finfo(np.float32).max], [-np.finfo(np.float32).max]])
    s = compute_stats([{"e": edge}], {"e": "min_max"}).stats["e"]
    assert s["max"][0] == np.finfo(np.float32).max and np.isfinite(s["std"]).all()


def test_streaming_constant_feature_and_errors() -> None:
    acc = StatsAccumulator({"c": "min_max", "n": "mean_std"})
    acc.update({"c": np.full((5, 2), 3.0)})
    acc.update({"c": np.full((5, 2), 3.0)})
    with pytest.raises(NormalizerError, match=r"key 'c': expected feature shape \(2,\)"):
        acc.update({"c": np.zeros((5, 3))})
    with pytest.raises(NormalizerError, match=r"keys \['n'\] received no data"):
        acc.finalize()
    acc.update({"n": np.array([1.0, 2.0])})
    norm = acc.finalize()
    np.testing.assert_array_equal(norm.stats["c"]["q01"], [3.0, 3.0])
    np.testing.assert_array_equal(norm.stats["c"]["std"], [0.0, 0.0])
    with pytest.raises(NormalizerError, match=r"frame 0: key 'n': expected a finite .*found nan"):
        acc.update({"n": np.array([np.nan])})


def test_stats_beyond_float32_are_refused() -> None:
    with pytest.raises(NormalizerError, match=r"key 'a' stat 'std': .*float32 range.*found 1e\+39"):
        Normalizer({"a": "mean_std"}, {"a": {"mean": [0.0], "std": [1e39]}})
    with pytest.raises(NormalizerError, match=r"key 'a' stat 'min': .*found nan"):
        Normalizer({"a": "min_max"}, {"a": {"min": [np.nan], "max": [1.0]}})
    # a feature constant at 1e31: the folded float32 offset mean / (std + eps) would be inf
    with pytest.raises(
        NormalizerError,
        match=r"key 'a' \(mode 'mean_std'\): expected normalization constants within float32 "
        r"range .* found center / scale = 1e\+39 \(center 1e\+31, scale 1e-08 with eps 1e-08\)",
    ):
        Normalizer({"a": "mean_std"}, {"a": {"mean": [0.0, 1e31], "std": [1.0, 0.0]}})
    with pytest.raises(NormalizerError, match=r"found 1 / scale = inf .*: use eps > 0"):
        Normalizer({"a": "min_max"}, {"a": {"min": [2.0], "max": [2.0]}}, eps=0.0)
    with pytest.raises(NormalizerError, match=r"eps: expected a finite number >= 0, found nan"):
        Normalizer({}, {}, eps=float("nan"))
    # the widest float32 range is fine: scale (max - min) / 2 is within float32
    wide = Normalizer({"a": "min_max"}, {"a": {"min": [-3e38], "max": [3e38]}})
    assert wide.normalize("a", torch.tensor([3e38])).item() == pytest.approx(1.0)
    assert Normalizer({"a": "min_max"}, {"a": {"min": [2.0], "max": [2.0]}}, eps=0.5).keys == ["a"]


def test_save_load_bit_exact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    chunks = [{"a": rng.normal(size=(50, 3)).astype(np.float32)} for _ in range(3)]
    src = compute_stats(chunks, {"a": "quantile"})
    full = Normalizer({**src.modes, "i": "identity", "img": "image"}, src.stats, eps=1e-6)
    path = tmp_path / "normalizer.safetensors"
    full.save(path)
    back = Normalizer.load(path)
    assert back.modes == full.modes and back.eps == full.eps
    sd0, sd1 = full.state_dict(), back.state_dict()
    assert sd0.keys() == sd1.keys() and len(sd0) == 6
    for k in sd0:
        assert sd1[k].dtype == torch.float64 and torch.equal(sd0[k], sd1[k]), k
    x = rng.normal(size=(7, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.normalize("a", x), full.normalize("a", x))


def test_load_rejects_bad_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bare = tmp_path / "bare.safetensors"
    save_file({"a/mean": torch.zeros(2)}, str(bare))
    with pytest.raises(NormalizerError, match=r"bare.safetensors: expected metadata key"):
        Normalizer.load(bare)
    n = make_all()
    stray = tmp_path / "stray.safetensors"
    save_file({**n.state_dict(), "zz/mean": torch.zeros(2)}, str(stray), metadata=n.metadata())
    with pytest.raises(NormalizerError, match=r"stray.safetensors: tensor 'zz/mean'"):
        Normalizer.load(stray)
    with pytest.raises(NormalizerError, match=r"missing.safetensors: cannot read"):
        Normalizer.load(tmp_path / "missing.safetensors")


def test_affine_constants_are_the_ones_normalize_applies() -> None:
    n = make_all()
    cpu = torch.device("cpu")
    x = torch.tensor([[3.0, 7.0], [2.0, -1.0]])
    pair = n.affine("s", False, cpu)
    assert pair is not None
    mul, add = pair
    torch.testing.assert_close(mul, torch.tensor([2.0, 0.25]))  # 1 / std
    torch.testing.assert_close(add, torch.tensor([-4.0, 0.25]))  # -mean / std
    assert torch.equal(torch.addcmul(add, x, mul), n.normalize("s", x))
    pair = n.affine("m", True, cpu)
    assert pair is not None
    assert torch.equal(torch.addcmul(pair[1], x, pair[0]), n.unnormalize("m", x))
    assert n.affine("i", False, cpu) is None
    pair = n.affine("img", False, cpu)
    assert pair is not None
    mul, add = pair
    assert mul.shape == () and add.shape == ()  # 0-d stays 0-d: any image shape broadcasts
    assert mul.item() == pytest.approx(1 / 255)
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert n.normalize("img", pixels.float()).shape == (3,)
    torch.testing.assert_close(n.normalize("img", pixels.float()), torch.tensor([0.0, 0.2, 1.0]))
    with pytest.raises(NormalizerError, match=r"no normalization stats/mode for key 'zz'"):
        n.affine("zz", False, cpu)
