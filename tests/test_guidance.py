"""RTC guided sampling against closed forms and plain Euler sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from envactor.chunking.guidance import VelocityFn, euler_sample, guidance_weight, rtc_sample
from envactor.chunking.masks import prefix_weights, prefix_weights_torch


def reference_rtc(
    noise: np.ndarray,
    Y: np.ndarray,
    W: np.ndarray,
    M: np.ndarray,
    b: np.ndarray,
    n: int,
    beta: float,
    vjp: bool,
) -> np.ndarray:
    """Independent float64 RTC on the linear field v = x M + b, whose J_v^T e is e M^T."""
    x = noise.astype(np.float64).copy()
    Wb = W.reshape((*W.shape, 1)) if W.ndim == 2 else W[None, :, None]
    for k in range(n):
        tau = k / n
        v = x @ M + b
        x1_hat = x + (1.0 - tau) * v
        e = Wb * (Y - x1_hat)
        g = e + (1.0 - tau) * (e @ M.T) if vjp else e
        if k == 0:
            weight = beta
        else:
            r2 = (1.0 - tau) ** 2 / (tau**2 + (1.0 - tau) ** 2)
            weight = min(beta, (1.0 - tau) / (tau * r2))
        x = x + (v + weight * g) / n
    return x


def linear_field(M: np.ndarray, b: np.ndarray) -> VelocityFn:
    Mt, bt = torch.from_numpy(M), torch.from_numpy(b)

    def velocity(x: torch.Tensor, tau: float) -> torch.Tensor:
        assert isinstance(tau, float)
        return x @ Mt.to(x.dtype) + bt.to(x.dtype)

    return velocity


class FlowMLP(nn.Module):
    """A small random velocity field over the flattened chunk plus tau."""

    def __init__(self, H: int, A: int, hidden: int = 64) -> None:
        super().__init__()
        self.H, self.A = H, A
        self.net = nn.Sequential(nn.Linear(H * A + 1, hidden), nn.Tanh(), nn.Linear(hidden, H * A))

    def forward(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        t = torch.full((x.shape[0], 1), tau, dtype=x.dtype, device=x.device)
        return self.net(torch.cat([x.flatten(1), t], dim=1)).view(x.shape)


@pytest.fixture
def linear_case() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    B, H, A = 2, 6, 3
    return {
        "M": rng.normal(scale=0.8, size=(A, A)),
        "b": rng.normal(size=A),
        "noise": rng.normal(size=(B, H, A)),
        "Y": rng.normal(size=(B, H, A)),
        "W": prefix_weights(2, 2, H).astype(np.float64),
    }


def test_guidance_weight_values() -> None:
    assert guidance_weight(0.0, 5.0) == 5.0
    assert guidance_weight(0.2, 5.0) == pytest.approx(4.25)  # (0.04 + 0.64) / 0.16
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)
    assert guidance_weight(0.4, 5.0) == pytest.approx(0.52 / 0.24)
    assert guidance_weight(0.2, 3.0) == 3.0
    assert guidance_weight(1.0, 5.0) == 0.0


def test_one_step_by_hand() -> None:
    # x = 1, v = 2x + 0.5 = 2.5, x1_hat = 3.5, Y = 3, W = 1 -> e = -0.5;
    # vjp: g = e (1 + 2) = -1.5, x' = 1 + 2.5 + 5 * (-1.5) = -4; identity: g = -0.5, x' = 1.
    v = linear_field(np.array([[2.0]]), np.array([0.5]))
    noise = torch.ones(1, 1, 1, dtype=torch.float64)
    Y = torch.full((1, 1, 1), 3.0, dtype=torch.float64)
    W = torch.ones(1, dtype=torch.float64)
    out = rtc_sample(v, noise, Y, W, num_steps=1, max_guidance_weight=5.0)
    assert out.item() == pytest.approx(-4.0)
    out_id = rtc_sample(v, noise, Y, W, num_steps=1, max_guidance_weight=5.0, jacobian="identity")
    assert out_id.item() == pytest.approx(1.0)


@pytest.mark.parametrize("num_steps", [1, 5])
def test_vjp_matches_closed_form(linear_case: dict[str, np.ndarray], num_steps: int) -> None:
    c = linear_case
    v = linear_field(c["M"], c["b"])
    args = (torch.from_numpy(c["noise"]), torch.from_numpy(c["Y"]), torch.from_numpy(c["W"]))
    ref_vjp = reference_rtc(c["noise"], c["Y"], c["W"], c["M"], c["b"], num_steps, 5.0, True)
    ref_id = reference_rtc(c["noise"], c["Y"], c["W"], c["M"], c["b"], num_steps, 5.0, False)

    out = rtc_sample(v, *args, num_steps=num_steps).numpy()
    np.testing.assert_allclose(out, ref_vjp, atol=1e-5, rtol=0)
    out_id = rtc_sample(v, *args, num_steps=num_steps, jacobian="identity").numpy()
    np.testing.assert_allclose(out_id, ref_id, atol=1e-5, rtol=0)
    # The identity shortcut is a different algorithm, not a rounding of the true VJP.
    assert np.abs(out_id - ref_vjp).max() > 1e-1
    assert np.abs(out - ref_id).max() > 1e-1


def test_float32_and_numpy_inputs(linear_case: dict[str, np.ndarray]) -> None:
    c = linear_case
    v = linear_field(c["M"], c["b"])
    noise = torch.from_numpy(c["noise"]).float()
    out = rtc_sample(v, noise, c["Y"].astype(np.float32), c["W"].astype(np.float32))
    assert out.dtype == torch.float32 and out.shape == noise.shape and not out.requires_grad
    ref = reference_rtc(c["noise"], c["Y"], c["W"], c["M"], c["b"], 5, 5.0, True)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-4, rtol=0)


def test_prefix_broadcast_from_h_a(linear_case: dict[str, np.ndarray]) -> None:
    c = linear_case
    v = linear_field(c["M"], c["b"])
    noise, Y0 = torch.from_numpy(c["noise"]), torch.from_numpy(c["Y"][0])
    out = rtc_sample(v, noise, Y0, torch.from_numpy(c["W"]))
    full = rtc_sample(v, noise, Y0.expand_as(noise).clone(), torch.from_numpy(c["W"]))
    torch.testing.assert_close(out, full, rtol=0, atol=0)


def test_prefix_none_is_euler(linear_case: dict[str, np.ndarray]) -> None:
    c = linear_case
    v = linear_field(c["M"], c["b"])
    noise = torch.from_numpy(c["noise"])
    out = rtc_sample(v, noise, None, None, num_steps=4)
    assert torch.equal(out, euler_sample(v, noise, num_steps=4))
    # Euler by hand: x <- x + (x M + b) / n, four times.
    x = c["noise"].copy()
    for _ in range(4):
        x = x + (x @ c["M"] + c["b"]) / 4
    np.testing.assert_allclose(out.numpy(), x, atol=1e-12)


def _mlp_case(B: int = 8, H: int = 8, A: int = 2) -> tuple[FlowMLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = FlowMLP(H, A)
    return model, torch.randn(B, H, A), torch.randn(B, H, A)


def test_guidance_pulls_the_prefix() -> None:
    model, noise, Y = _mlp_case()
    d = 3
    W = prefix_weights_torch(d, 3, 8)
    plain = euler_sample(model, noise)
    err_plain = (plain[:, :d] - Y[:, :d]).abs().mean().item()
    for jac in ("vjp", "identity"):
        guided = rtc_sample(model, noise, Y, W, jacobian=jac)
        err = (guided[:, :d] - Y[:, :d]).abs().mean().item()
        assert err < 0.5 * err_plain, (jac, err, err_plain)
    # Far from the prefix (W = 0) the chunk is still mostly the model's own.
    assert not torch.allclose(guided[:, 6:], Y[:, 6:], atol=0.1)


def test_inside_inference_mode_no_param_grads() -> None:
    model, noise, Y = _mlp_case()
    W = prefix_weights_torch(3, 3, 8)
    expected = rtc_sample(model, noise, Y, W)
    with torch.inference_mode():
        noise_i, Y_i, W_i = noise.clone(), Y.clone(), W.clone()
        assert noise_i.is_inference()
        out = rtc_sample(model, noise_i, Y_i, W_i)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_per_sample_weights_equal_single_runs() -> None:
    model, noise, Y = _mlp_case(B=3)
    Ws = torch.stack([prefix_weights_torch(d, 3, 8) for d in (0, 2, 4)])  # (B, H)
    batched = rtc_sample(model, noise, Y, Ws)
    for i in range(3):
        alone = rtc_sample(model, noise[i : i + 1], Y[i : i + 1], Ws[i])
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-5)
    # and the per-sample weights really differ from using sample 0's weights for all
    shared = rtc_sample(model, noise, Y, Ws[0])
    assert (shared[2] - batched[2]).abs().max() > 1e-2


def test_zero_beta_is_unguided() -> None:
    model, noise, Y = _mlp_case()
    out = rtc_sample(model, noise, Y, prefix_weights_torch(3, 3, 8), max_guidance_weight=0.0)
    assert torch.equal(out, euler_sample(model, noise))


def test_non_differentiable_field_refused_for_vjp() -> None:
    model, noise, Y = _mlp_case()
    W = prefix_weights_torch(3, 3, 8)

    def frozen(x: torch.Tensor, tau: float) -> torch.Tensor:
        with torch.no_grad():
            return model(x, tau)

    with pytest.raises(RuntimeError, match="does not depend on x through autograd"):
        rtc_sample(frozen, noise, Y, W)
    ident = rtc_sample(frozen, noise, Y, W, jacobian="identity")  # allowed when asked for
    torch.testing.assert_close(ident, rtc_sample(model, noise, Y, W, jacobian="identity"))


def test_captured_inference_tensor_gets_a_clear_error() -> None:
    model, noise, Y = _mlp_case()
    with torch.inference_mode():
        scale = torch.full((1, 8, 2), 2.0)

    def field(x: torch.Tensor, tau: float) -> torch.Tensor:
        return model(x * scale, tau)  # mul saves `scale` for backward

    with pytest.raises(RuntimeError, match=r"created under torch\.inference_mode"):
        rtc_sample(field, noise, Y, prefix_weights_torch(3, 3, 8))


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"num_steps": 0}, ValueError, "num_steps must be >= 1, got 0"),
        ({"num_steps": 2.0}, TypeError, "num_steps must be an integer >= 1, got float"),
        ({"num_steps": True}, TypeError, "got bool"),
        ({"max_guidance_weight": -1.0}, ValueError, "finite and in [0, 100], got -1.0"),
        ({"max_guidance_weight": float("nan")}, ValueError, "got nan"),
        ({"jacobian": "exact"}, ValueError, "'vjp' or 'identity', got 'exact'"),
        ({"prefix": torch.zeros(2, 5, 3)}, ValueError, "pad the unexecuted remainder"),
        ({"weights": torch.ones(5)}, ValueError, "weights must have shape (H,) = (6,)"),
        ({"weights": None}, ValueError, "weights (H,) or (B, H) are required"),
        ({"noise": torch.zeros(6, 3)}, ValueError, "(B, H, A), got shape (6, 3)"),
        ({"velocity_fn": lambda x, t: x[:, :2]}, ValueError, "shaped like x (2, 6, 3)"),
    ],
)
def test_validation_errors(kwargs: dict[str, object], exc: type[Exception], words: str) -> None:
    call: dict[str, object] = {
        "velocity_fn": lambda x, t: -x,
        "noise": torch.zeros(2, 6, 3),
        "prefix": torch.zeros(2, 6, 3),
        "weights": torch.ones(6),
    }
    call.update(kwargs)
    with pytest.raises(exc) as info:
        rtc_sample(**call)  # type: ignore[arg-type]
    assert words in str(info.value)
