"""Copy a state dict into a live module in place: same storage, cast to the module's dtype/device.

``load_state_dict_into`` writes every source tensor into the module's *existing* parameter or
buffer with ``Tensor.copy_``, so ``data_ptr()`` never changes: CUDA graphs, compiled code and
optimizer references that point at the module's tensors stay valid after a weight update.
Everything is checked (names, shapes, dtype kinds) before the first byte is copied, so a
rejected update leaves the module untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "LoadReport",
    "WeightsError",
    "check_state_dict",
    "load_state_dict_into",
    "map_names",
    "pin_state_dict",
]


class WeightsError(RuntimeError):
    """A state dict that does not fit the module; the message names the tensors involved."""


@dataclass
class LoadReport:
    """What a load did: target names written, target names not found, source names unused."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    num_bytes: int = 0

    @property
    def ok(self) -> bool:
        """True when every target tensor was written and every source tensor was used."""
        return not self.missing and not self.unexpected


def _matches(key: str, prefix: str) -> bool:
    return prefix == "" or key == prefix or key.startswith(prefix + ".")


def map_names(keys: list[str], name_map: Mapping[str, str] | None) -> dict[str, str]:
    """Map source names to target names by prefix at '.' boundaries (longest prefix wins).

    ``{"actor.encoder": "encoder"}`` turns ``actor.encoder.0.weight`` into ``encoder.0.weight``;
    an empty source prefix matches every key, an empty target prefix strips the source prefix.
    Keys no entry matches keep their name. An entry that matches no key, or two source keys
    landing on one target name, is a ``WeightsError``.
    """
    if not name_map:
        return {k: k for k in keys}
    prefixes = sorted(name_map, key=len, reverse=True)
    used: set[str] = set()
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for key in keys:
        new = key
        for src in prefixes:
            if _matches(key, src):
                used.add(src)
                rest = key if not src else key[len(src) + 1 :]
                dst = name_map[src]
                new = f"{dst}.{rest}" if dst and rest else (dst or rest)
                break
        if new in seen:
            raise WeightsError(
                f"name_map sends both {seen[new]!r} and {key!r} to {new!r}; "
                "expected each target name to receive one source tensor"
            )
        seen[new] = key
        out[key] = new
    unmatched = [p for p in name_map if p not in used]
    if unmatched:
        raise WeightsError(
            f"name_map entries {unmatched} match no source tensor name "
            f"(source names start with: {sorted({k.split('.')[0] for k in keys})})"
        )
    return out


def _plan(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    name_map: Mapping[str, str] | None,
) -> tuple[list[tuple[str, Tensor, Tensor]], LoadReport]:
    """Pair (target name, target tensor, source tensor) and validate shapes and dtype kinds."""
    targets = module.state_dict(keep_vars=True)
    mapping = map_names(list(state_dict), name_map)
    pairs: list[tuple[str, Tensor, Tensor]] = []
    report = LoadReport()
    for src_name, tgt_name in mapping.items():
        src = state_dict[src_name]
        if not isinstance(src, Tensor):
            raise WeightsError(
                f"source {src_name!r}: expected a torch.Tensor, found {type(src).__name__}"
            )
        tgt = targets.get(tgt_name)
        if tgt is None:
            report.unexpected.append(src_name)
            continue
        where = tgt_name if tgt_name == src_name else f"{tgt_name} (source {src_name})"
        if tuple(src.shape) != tuple(tgt.shape):
            raise WeightsError(
                f"shape mismatch for tensor {where}: module expects {tuple(tgt.shape)}, "
                f"state dict has {tuple(src.shape)}"
            )
        if (src.is_floating_point() or src.is_complex()) and not (
            tgt.is_floating_point() or tgt.is_complex()
        ):
            raise WeightsError(
                f"dtype mismatch for tensor {where}: module holds {tgt.dtype}, state dict has "
                f"{src.dtype}; a float-to-integer copy would truncate"
            )
        pairs.append((tgt_name, tgt, src))
        report.loaded.append(tgt_name)
        report.num_bytes += tgt.numel() * tgt.element_size()
    written = set(report.loaded)
    report.missing = [k for k in targets if k not in written]
    return pairs, report


def _raise_if_strict(report: LoadReport, strict: bool, module: nn.Module) -> None:
    if not strict or report.ok:
        return
    parts = []
    if report.missing:
        parts.append(f"missing tensors (in the module, not in the state dict): {report.missing}")
    if report.unexpected:
        parts.append(
            f"unexpected tensors (in the state dict, not in the module): {report.unexpected}"
        )
    raise WeightsError(f"strict load into {type(module).__name__} failed: " + "; ".join(parts))


def check_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = True,
    name_map: Mapping[str, str] | None = None,
) -> LoadReport:
    """Validate exactly as ``load_state_dict_into`` would, without copying anything."""
    _, report = _plan(module, state_dict, name_map)
    _raise_if_strict(report, strict, module)
    return report


def load_state_dict_into(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = True,
    name_map: Mapping[str, str] | None = None,
    non_blocking: bool = True,
) -> LoadReport:
    """Copy ``state_dict`` into ``module``'s existing parameters and buffers, in place.

    Each source is cast to the target's dtype and moved to its device inside ``copy_``; sources
    may be non-contiguous or pinned. Shape mismatches always raise; missing or unexpected names
    raise when ``strict`` and are returned in the report otherwise. With ``non_blocking`` a
    pinned CPU source is copied to CUDA asynchronously on the current stream: later work on
    that stream sees the new values, but do not modify the source until the stream has synced.
    """
    pairs, report = _plan(module, state_dict, name_map)
    _raise_if_strict(report, strict, module)
    with torch.no_grad():
        for _, tgt, src in pairs:
            # Asynchronous only towards an accelerator: a device->host copy must be complete on
            # return, or the caller could read the CPU tensor before the bytes arrive.
            tgt.copy_(src, non_blocking=non_blocking and tgt.device.type != "cpu")
    return report


def pin_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Page-locked copies of the CPU tensors when CUDA is available (faster async uploads)."""
    if not torch.cuda.is_available():
        return dict(state_dict)
    return {
        k: v.pin_memory() if v.device.type == "cpu" and not v.is_pinned() else v
        for k, v in state_dict.items()
    }
