"""In-place state dict loading: dtype casts, stable storage, name mapping, strictness."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from envactor.weights import (
    LoadReport,
    WeightsError,
    check_state_dict,
    load_state_dict_into,
    map_names,
    pin_state_dict,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)


def fresh_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    src = Net()
    with torch.no_grad():
        src.encoder[1].running_mean.uniform_(-1, 1)
        src.encoder[1].num_batches_tracked.fill_(7)
    return {k: v.clone() for k, v in src.state_dict().items()}


def test_fp32_into_bf16_module_in_place() -> None:
    net = Net().to(torch.bfloat16)
    ptrs = {k: v.data_ptr() for k, v in net.state_dict(keep_vars=True).items()}
    sd = fresh_sd()
    report = load_state_dict_into(net, sd)
    assert report.ok and report.missing == [] and report.unexpected == []
    assert sorted(report.loaded) == sorted(sd)
    for k, v in net.state_dict(keep_vars=True).items():
        assert v.data_ptr() == ptrs[k], f"{k} storage moved"
        expected = sd[k].to(v.dtype)
        assert torch.equal(v.detach(), expected), k
    assert net.encoder[0].weight.dtype == torch.bfloat16
    assert int(net.encoder[1].num_batches_tracked) == 7
    # bytes written: bf16 params/buffers (2 bytes) plus the int64 counter (8 bytes)
    n_float = sum(v.numel() for k, v in sd.items() if v.is_floating_point())
    assert report.num_bytes == 2 * n_float + 8


def test_parameters_keep_grad_and_identity() -> None:
    net = Net()
    params_before = list(net.parameters())
    load_state_dict_into(net, fresh_sd(1))
    assert all(a is b for a, b in zip(params_before, net.parameters()))
    assert all(p.requires_grad for p in net.parameters())


def test_non_contiguous_source() -> None:
    net = nn.Linear(3, 4, bias=False)
    src = torch.arange(12.0).reshape(3, 4).t()  # (4, 3) transposed view
    assert not src.is_contiguous()
    load_state_dict_into(net, {"weight": src})
    assert torch.equal(net.weight.detach(), src.contiguous())


def test_name_map_longest_prefix_at_dot_boundaries() -> None:
    mapping = map_names(
        ["actor.encoder.0.weight", "actor.encoder2.bias", "actor.head.w", "critic.w"],
        {"actor": "", "actor.encoder": "encoder", "critic": "value"},
    )
    assert mapping == {
        "actor.encoder.0.weight": "encoder.0.weight",
        "actor.encoder2.bias": "encoder2.bias",  # 'actor.encoder' does not match 'encoder2'
        "actor.head.w": "head.w",
        "critic.w": "value.w",
    }
    net = Net()
    sd = {f"actor.{k}": v for k, v in fresh_sd(2).items()}
    report = load_state_dict_into(net, sd, name_map={"actor.encoder": "encoder", "actor": ""})
    assert report.ok
    assert torch.equal(net.head.weight.detach(), sd["actor.head.weight"])
    assert torch.equal(net.encoder[0].bias.detach(), sd["actor.encoder.0.bias"])


def test_unmatched_name_map_entry_is_an_error() -> None:
    with pytest.raises(WeightsError, match=r"name_map entries \['policy.enc'\] match no source"):
        load_state_dict_into(Net(), fresh_sd(), name_map={"policy.enc": "encoder"})
    with pytest.raises(WeightsError, match=r"sends both 'a.w' and 'b.w' to 'w'"):
        map_names(["a.w", "b.w"], {"a": "", "b": ""})


def test_strict_missing_and_unexpected() -> None:
    net = Net()
    before = net.head.weight.detach().clone()
    sd = fresh_sd(3)
    sd.pop("head.bias")
    sd["head.extra"] = torch.zeros(2)
    with pytest.raises(WeightsError) as err:
        load_state_dict_into(net, sd)
    msg = str(err.value)
    assert "missing tensors (in the module, not in the state dict): ['head.bias']" in msg
    assert "unexpected tensors (in the state dict, not in the module): ['head.extra']" in msg
    assert torch.equal(net.head.weight.detach(), before), "a rejected load must not write"


def test_non_strict_report() -> None:
    net = Net()
    sd = fresh_sd(4)
    sd.pop("head.bias")
    sd["head.extra"] = torch.zeros(2)
    report = load_state_dict_into(net, sd, strict=False)
    assert isinstance(report, LoadReport) and not report.ok
    assert report.missing == ["head.bias"] and report.unexpected == ["head.extra"]
    assert "head.weight" in report.loaded and "head.bias" not in report.loaded
    assert torch.equal(net.head.weight.detach(), sd["head.weight"])
    assert check_state_dict(Net(), sd, strict=False).missing == ["head.bias"]


def test_shape_mismatch_names_tensor_and_shapes() -> None:
    sd = fresh_sd()
    sd["head.weight"] = torch.zeros(3, 4)
    with pytest.raises(WeightsError, match=r"head.weight: module expects \(2, 4\), .* \(3, 4\)"):
        load_state_dict_into(Net(), sd, strict=False)
    sd = {f"actor.{k}": v for k, v in sd.items()}
    with pytest.raises(WeightsError, match=r"head.weight \(source actor.head.weight\)"):
        load_state_dict_into(Net(), sd, name_map={"actor": ""})


def test_float_into_integer_buffer_refused() -> None:
    sd = fresh_sd()
    sd["encoder.1.num_batches_tracked"] = torch.tensor(2.5)
    with pytest.raises(WeightsError, match=r"num_batches_tracked.*would truncate"):
        load_state_dict_into(Net(), sd)


def test_pin_state_dict_is_identity_without_cuda() -> None:
    sd = fresh_sd()
    pinned = pin_state_dict(sd)
    assert pinned.keys() == sd.keys()
    if not torch.cuda.is_available():
        assert all(pinned[k] is sd[k] for k in sd)
    else:
        assert all(t.is_pinned() for t in pinned.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_source_into_cuda_module() -> None:
    net = Net().cuda().to(torch.bfloat16)
    ptrs = [p.data_ptr() for p in net.parameters()]
    sd = pin_state_dict(fresh_sd(5))
    load_state_dict_into(net, sd)
    torch.cuda.synchronize()
    assert ptrs == [p.data_ptr() for p in net.parameters()]
    assert torch.equal(net.head.weight.detach().cpu(), sd["head.weight"].to(torch.bfloat16))
