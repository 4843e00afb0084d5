"""envactor.nn: the component factory, its error messages, and every built-in block."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import envactor.registry
from envactor.nn import (
    MLP,
    ComponentError,
    FlowVelocityMLP,
    build_component,
    build_components,
    describe_component,
    known_block_types,
)
from envactor.nn.blocks.conv import SpatialSoftmax
from envactor.registry import COMPONENT_REGISTRY

BUILTINS = {
    "chunk_transformer",
    "conv_image_encoder",
    "flow_velocity_mlp",
    "mlp",
    "observation_encoder",
    "sinusoidal_time_embedding",
    "transformer_encoder",
}
MLP_CFG: dict[str, Any] = {"type": "mlp", "in_dim": 3, "hidden_dims": [16, 16], "out_dim": 5}
FLOW_CFG: dict[str, Any] = {
    "type": "flow_velocity_mlp",
    "horizon": 4,
    "action_dim": 2,
    "cond_dim": 5,
    "hidden_dims": [32, 24],
    "time_dim": 8,
}


# A third-party block and a factory function, registered the way a plugin would.
@COMPONENT_REGISTRY.register("test_nn_scale")
class Scale(nn.Module):
    def __init__(self, factor: float, bias: bool = False) -> None:
        super().__init__()
        self.factor = factor
        self.bias = nn.Parameter(torch.ones(1)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor + (0 if self.bias is None else self.bias)


@COMPONENT_REGISTRY.register("test_nn_linear_fn")
def make_linear(in_dim: int, out_dim: int, **extra: Any) -> nn.Module:
    return nn.Linear(in_dim, out_dim, bias=extra.get("bias", True))


@COMPONENT_REGISTRY.register("test_nn_not_a_module")
def make_not_a_module(size: int) -> object:
    return [size]


def _build(cfg: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    return build_component(cfg).eval()


# ---------------------------------------------------------------- blocks: shapes


@pytest.mark.parametrize(
    ("cfg", "inputs", "out_shape"),
    [
        (MLP_CFG, lambda: (torch.randn(4, 7, 3),), (4, 7, 5)),
        (
            {
                "type": "transformer_encoder",
                "d_model": 16,
                "nhead": 2,
                "num_layers": 1,
                "dim_feedforward": 32,
                "max_len": 10,
                "input_dim": 3,
                "output_dim": 5,
            },
            lambda: (torch.randn(2, 6, 3),),
            (2, 6, 5),
        ),
        (
            {
                "type": "transformer_encoder",
                "d_model": 16,
                "nhead": 2,
                "num_layers": 1,
                "dim_feedforward": 32,
                "max_len": 10,
            },
            lambda: (torch.randn(2, 10, 16),),
            (2, 10, 16),
        ),
        ({"type": "sinusoidal_time_embedding", "dim": 8}, lambda: (torch.rand(3),), (3, 8)),
        ({"type": "sinusoidal_time_embedding", "dim": 7}, lambda: (torch.tensor(0.3),), (7,)),
        (
            {"type": "sinusoidal_time_embedding", "dim": 8, "hidden_dim": 16},
            lambda: (torch.rand(3),),
            (3, 8),
        ),
        (
            {
                "type": "conv_image_encoder",
                "in_channels": 3,
                "image_size": [16, 12],
                "channels": [8, 8],
                "out_dim": 6,
            },
            lambda: (torch.rand(2, 3, 16, 12),),
            (2, 6),
        ),
        (
            {
                "type": "conv_image_encoder",
                "in_channels": 1,
                "image_size": [9, 9],
                "channels": [4],
                "kernel_size": 5,
                "out_dim": 3,
                "pooling": "spatial_softmax",
            },
            lambda: (torch.rand(2, 1, 9, 9),),
            (2, 3),
        ),
        (FLOW_CFG, lambda: (torch.randn(3, 4, 2), torch.rand(3), torch.randn(3, 5)), (3, 4, 2)),
        (
            {
                "type": "chunk_transformer",
                "action_dim": 2,
                "horizon": 4,
                "cond_dim": 5,
                "d_model": 16,
                "nhead": 2,
                "num_layers": 1,
                "dim_feedforward": 32,
            },
            lambda: (torch.randn(3, 5),),
            (3, 4, 2),
        ),
    ],
    ids=lambda v: v["type"] if isinstance(v, dict) else "",
)
def test_block_builds_from_dict_with_documented_output_shape(
    cfg: dict[str, Any], inputs: Any, out_shape: tuple[int, ...]
) -> None:
    block = _build(cfg)
    assert type(block).registered_name == cfg["type"]  # type: ignore[attr-defined]
    assert "return" in type(block).shapes  # type: ignore[attr-defined]
    assert block(*inputs()).shape == out_shape


def test_known_block_types_and_describe() -> None:
    assert set(known_block_types()) >= BUILTINS
    text = describe_component("mlp")
    assert text.startswith("mlp(in_dim: int, out_dim: int, hidden_dims: Sequence[int] = (256, 256)")


def test_mlp_worked_values() -> None:
    mlp = build_component({"type": "mlp", "in_dim": 2, "out_dim": 1, "hidden_dims": []})
    assert isinstance(mlp, MLP)
    lin = mlp.net[0]
    assert isinstance(lin, nn.Linear)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
        lin.bias.fill_(0.5)
    assert mlp(torch.tensor([[3.0, 4.0], [-3.0, -4.0]])).flatten().tolist() == [11.5, -10.5]
    relu_out = build_component(
        {"type": "mlp", "in_dim": 2, "out_dim": 1, "hidden_dims": [], "final_activation": True}
    )
    relu_out.load_state_dict(mlp.state_dict())
    assert relu_out(torch.tensor([[3.0, 4.0], [-3.0, -4.0]])).flatten().tolist() == [11.5, 0.0]


def test_mlp_dropout_active_in_train_off_in_eval() -> None:
    torch.manual_seed(0)
    mlp = build_component({**MLP_CFG, "hidden_dims": [64, 64], "dropout": 0.5})
    assert isinstance(mlp, MLP)
    assert sum(isinstance(m, nn.Dropout) for m in mlp.modules()) == 2
    x = torch.randn(8, 3)
    mlp.train()
    assert not torch.equal(mlp(x), mlp(x))
    mlp.eval()
    y_eval = mlp(x)
    assert torch.equal(y_eval, mlp(x))
    # eval equals the same weights run with the dropout layers removed
    no_drop = nn.Sequential(*[m for m in mlp.net if not isinstance(m, nn.Dropout)])
    assert torch.allclose(y_eval, no_drop(x))
    plain = build_component(MLP_CFG)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())


def test_sinusoidal_embedding_worked_values_and_determinism() -> None:
    cfg = {"type": "sinusoidal_time_embedding", "dim": 4, "scale": 1.0}
    emb = build_component(cfg)
    # freqs = 10000 ** (-k / 2) = [1, 0.01]; layout [cos..., sin...]
    assert emb(0.0).tolist() == [1.0, 1.0, 0.0, 0.0]
    expected = [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)]
    assert emb(torch.tensor(1.0)).tolist() == pytest.approx(expected, abs=1e-6)
    batch = emb(torch.tensor([0.0, 1.0]))
    assert torch.equal(batch[0], emb(0.0)) and torch.equal(batch[1], emb(1.0))
    default = build_component({"type": "sinusoidal_time_embedding", "dim": 32})
    again = build_component({"type": "sinusoidal_time_embedding", "dim": 32})
    e0, e1 = default(torch.tensor([0.0, 1.0]))
    assert (e0 - e1).abs().max() > 0.5
    assert torch.equal(default(torch.tensor([0.0, 1.0])), again(torch.tensor([0.0, 1.0])))
    with pytest.raises(ValueError, match=r"expected tau of shape \(\) or \(B,\), got \(2, 1\)"):
        emb(torch.zeros(2, 1))


def test_transformer_encoder_padding_and_max_len() -> None:
    enc = _build(
        {
            "type": "transformer_encoder",
            "d_model": 16,
            "nhead": 2,
            "num_layers": 2,
            "dim_feedforward": 32,
            "max_len": 6,
            "input_dim": 3,
        }
    )
    x = torch.randn(1, 5, 3)
    mask = torch.tensor([[False, False, False, True, True]])
    x2 = x.clone()
    x2[0, 3:] = 100.0  # padded tokens must not change the others
    out1, out2 = enc(x, padding_mask=mask), enc(x2, padding_mask=mask)
    assert torch.allclose(out1[0, :3], out2[0, :3], atol=1e-5)
    assert not torch.allclose(enc(x)[0, :3], enc(x2)[0, :3], atol=1e-3)
    with pytest.raises(ValueError, match=r"T<=6, 3\), got \(1, 7, 3\)"):
        enc(torch.randn(1, 7, 3))


def test_conv_encoder_refuses_uint8_and_spatial_softmax_keypoint() -> None:
    enc = _build(
        {
            "type": "conv_image_encoder",
            "in_channels": 3,
            "image_size": [8, 8],
            "channels": [4],
            "out_dim": 2,
        }
    )
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    # pixels are divided by 255 in one place only: the policy boundary's 'image' normalization
    with pytest.raises(ValueError, match=r"expected float pixels in \[0, 1\], got torch.uint8"):
        enc(img)
    assert enc(img.float() / 255.0).shape == (2, 2)
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\), got \(2, 3, 8, 9\)"):
        enc(torch.rand(2, 3, 8, 9))
    feats = torch.zeros(1, 2, 3, 4)
    feats[0, 0, 0, 3] = 50.0  # top-right: x = +1, y = -1
    feats[0, 1, 2, 0] = 50.0  # bottom-left: x = -1, y = +1
    kp = SpatialSoftmax(3, 4)(feats)
    assert kp.flatten().tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-4)


def test_flow_velocity_is_conditioned_and_has_nontrivial_jacobian_at_init() -> None:
    flow = _build(FLOW_CFG)
    assert isinstance(flow, FlowVelocityMLP)
    x = torch.randn(3, 4, 2, requires_grad=True)
    tau, cond = torch.full((3,), 0.4), torch.randn(3, 5)
    v = flow(x, tau, cond)
    (g,) = torch.autograd.grad(v.square().sum(), x)
    assert g.abs().min() > 0  # every input coordinate moves the output
    assert torch.equal(flow(x, torch.tensor(0.4), cond), v)  # scalar tau broadcasts
    assert (flow(x, torch.full((3,), 0.9), cond) - v).abs().max() > 1e-3
    assert (flow(x, tau, cond + 1.0) - v).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"cond of shape \(3, 5\), got None"):
        flow(x, tau)
    uncond = _build({**FLOW_CFG, "cond_dim": 0})
    assert uncond(x, 0.5).shape == (3, 4, 2)


# ---------------------------------------------------------------- factory errors


def test_wrong_param_name_names_everything() -> None:
    cfg = {"type": "mlp", "in_dim": 3, "out_dim": 2, "hiden_dims": [4]}
    with pytest.raises(ComponentError) as info:
        build_component(cfg, name="encoder", source="configs/pol.yaml")
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert msg.startswith("component 'encoder' in configs/pol.yaml, type 'mlp': ")
    assert "unknown parameter 'hiden_dims' (did you mean 'hidden_dims'?)" in msg
    for accepted in MLP.__init__.__code__.co_varnames[1:8]:
        assert accepted in msg.split("Accepted parameters of 'mlp':")[1]


def test_missing_required_param() -> None:
    with pytest.raises(ComponentError, match=r"missing required parameter\(s\) 'out_dim'"):
        build_component({"type": "mlp", "in_dim": 3}, name="enc")
    with pytest.raises(ComponentError, match="'horizon', 'action_dim', 'cond_dim'"):
        build_component({"type": "flow_velocity_mlp"})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("hidden_dims", "abc", "expected Sequence[int], got 'abc' (str)"),
        ("hidden_dims", [4, "x"], "expected Sequence[int], got [4, 'x']"),
        ("in_dim", "3", "expected int, got '3' (str)"),
        ("in_dim", True, "expected int, got True (bool)"),
        ("in_dim", 3.5, "expected int, got 3.5 (float)"),
        ("layer_norm", 1, "expected bool, got 1 (int)"),
        ("activation", "Relu", "Input should be 'relu', 'gelu', 'silu', 'tanh' or 'mish'"),
    ],
)
def test_wrong_param_type(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ComponentError, match="Accepted parameters") as info:
        build_component({**MLP_CFG, key: value}, name="enc")
    assert f"parameter {key!r}: " in str(info.value)
    assert expected in str(info.value)


def test_lossless_conversions_are_accepted() -> None:
    mlp = build_component({**MLP_CFG, "dropout": 0, "hidden_dims": (8,)})  # int -> float
    assert [m.p for m in mlp.modules() if isinstance(m, nn.Dropout)] == []
    enc = build_component(
        {"type": "conv_image_encoder", "in_channels": 1, "image_size": [4, 6], "out_dim": 2}
    )
    assert enc.image_size == (4, 6)  # YAML list -> tuple[int, int]
    with pytest.raises(ComponentError, match=r"expected tuple\[int, int\], got \[4, 6, 1\]"):
        build_component(
            {"type": "conv_image_encoder", "in_channels": 1, "image_size": [4, 6, 1], "out_dim": 2}
        )


def test_unknown_or_missing_type_lists_known_types() -> None:
    with pytest.raises(ComponentError) as info:
        build_component({"type": "mlpp", "in_dim": 3}, name="enc", source="p.yaml")
    msg = str(info.value)
    assert "component 'enc' in p.yaml: unknown block type 'mlpp' (did you mean 'mlp'?)" in msg
    assert all(name in msg for name in BUILTINS)
    with pytest.raises(ComponentError, match=r"found no 'type' key; known block types: .*mlp"):
        build_component({"in_dim": 3})
    with pytest.raises(ComponentError, match="found type 3"):
        build_component({"type": 3})
    with pytest.raises(ComponentError, match=r"expected a mapping .* got list"):
        build_component([1, 2])  # type: ignore[arg-type]


def test_constructor_refusals_become_component_errors() -> None:
    with pytest.raises(ComponentError, match=r"type 'transformer_encoder': d_model \(30\) must"):
        build_component({"type": "transformer_encoder", "d_model": 30, "nhead": 4}, name="t")
    with pytest.raises(ComponentError, match=r"dropout must be in \[0, 1\), got 1.5"):
        build_component({**MLP_CFG, "dropout": 1.5})


# ---------------------------------------------------------------- build_components, plugins


def test_build_components_names_order_and_types() -> None:
    mods = build_components({"vel": FLOW_CFG, "enc": MLP_CFG}, sources={"vel": Path("a.yaml")})
    assert isinstance(mods, nn.ModuleDict)
    assert list(mods.keys()) == ["vel", "enc"]
    assert isinstance(mods["vel"], FlowVelocityMLP) and isinstance(mods["enc"], MLP)
    assert set(mods.state_dict()) >= {"enc.net.0.weight", "vel.out_proj.weight"}


def test_build_components_reports_every_failure() -> None:
    cfgs = {"ok": MLP_CFG, "bad1": {"type": "mlp"}, "bad2": {"type": "nope"}, "a.b": MLP_CFG}
    with pytest.raises(ComponentError) as info:
        build_components(cfgs, sources={"bad1": "x.yaml", "bad2": "y.yaml"})
    lines = str(info.value).splitlines()
    assert lines[0].startswith("component 'bad1' in x.yaml, type 'mlp': missing required")
    assert lines[1].startswith("component 'bad2' in y.yaml: unknown block type 'nope'")
    assert lines[2].startswith("component 'a.b': a component name must be")
    with pytest.raises(ComponentError, match="component 'keys': cannot be used"):
        build_components({"keys": MLP_CFG})


def test_third_party_blocks_work_with_the_factory() -> None:
    scale = build_component({"type": "test_nn_scale", "factor": 3})
    assert isinstance(scale, Scale) and scale.factor == 3.0
    assert scale(torch.tensor([2.0])).item() == 6.0
    with pytest.raises(ComponentError, match=r"'fact' \(did you mean 'factor'\?\).*factor: float"):
        build_component({"type": "test_nn_scale", "fact": 3})
    # a factory function with **kwargs passes extra keys through
    lin = build_component({"type": "test_nn_linear_fn", "in_dim": 2, "out_dim": 3, "bias": False})
    assert isinstance(lin, nn.Linear) and lin.bias is None and lin.out_features == 3
    with pytest.raises(ComponentError, match=r"returned list, expected a torch\.nn\.Module"):
        build_component({"type": "test_nn_not_a_module", "size": 1})
    assert "test_nn_scale" in known_block_types()


def test_registry_imports_builtin_blocks_lazily() -> None:
    # A fresh interpreter with a bare ``envactor`` package, so nothing but the registry is loaded.
    pkg_dir = str(Path(envactor.registry.__file__).parent)
    code = (
        "import sys, types; pkg = types.ModuleType('envactor'); "
        f"pkg.__path__ = [{pkg_dir!r}]; sys.modules['envactor'] = pkg; "
        "from envactor.registry import COMPONENT_REGISTRY as R; "
        "assert 'envactor.nn.blocks' not in sys.modules; "
        "print(R.get('transformer_encoder').__name__, R.get('mlp').__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["TransformerEncoder", "MLP"]
