"""A weight version as plain numpy arrays: what travels through Ray's object store.

Numpy arrays are stored by Ray out of band and read back zero-copy from shared memory, so a
worker on the learner's node maps the bytes instead of copying them; ``unpack`` wraps them as
tensors without a copy and ``load_state_dict_into`` writes them straight into the live
parameters. bfloat16 (which numpy lacks) travels as its raw 16-bit pattern and is viewed back.
No Ray import here: the payload is testable and usable without a cluster.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from envactor.policy.base import Policy

__all__ = ["WeightPayload", "pack", "policy_weights", "unpack"]

# dtypes numpy cannot hold: sent as a same-width integer view, restored by name
_VIEWED = {torch.bfloat16: torch.int16}
_BY_NAME = {str(t).removeprefix("torch."): t for t in _VIEWED}


@dataclass
class WeightPayload:
    """One published version: ``tensors`` by full name (``<component>.<param>``), the torch dtype
    names of the viewed ones, and how many bytes the arrays hold."""

    version: int
    tensors: dict[str, np.ndarray]
    viewed: dict[str, str] = field(default_factory=dict)
    nbytes: int = 0


def policy_weights(
    policy: Policy, components: Iterable[str] | None = None, *, copy: bool = True
) -> dict[str, torch.Tensor]:
    """The acting weights (EMA when enabled) of ``components`` (default: all) as one flat CPU
    state dict ``{"<component>.<tensor>": tensor}``; ``copy=False``: the live CPU tensors."""
    acting = policy.acting_state_dict(copy=copy)
    names = list(acting) if components is None else list(components)
    unknown = [c for c in names if c not in acting]
    if unknown:
        raise KeyError(
            f"policy {policy.name!r} has no components {unknown}; it has {sorted(acting)}"
        )
    return {f"{c}.{k}": v for c in names for k, v in acting[c].items()}


def pack(
    state_dict: Mapping[str, torch.Tensor],
    version: int,
    *,
    copy: bool = False,
) -> WeightPayload:
    """A flat state dict -> ``WeightPayload`` (contiguous CPU numpy arrays). Without ``copy``
    the arrays may share memory with the tensors (``ray.put`` copies them anyway)."""
    tensors: dict[str, np.ndarray] = {}
    viewed: dict[str, str] = {}
    nbytes = 0
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"weights {name!r}: expected a torch.Tensor, got {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        if copy:
            t = t.clone()
        if t.dtype in _VIEWED:
            viewed[name] = str(t.dtype).removeprefix("torch.")
            t = t.view(_VIEWED[t.dtype])
        arr = t.numpy()
        tensors[name] = arr
        nbytes += arr.nbytes
    return WeightPayload(int(version), tensors, viewed, nbytes)


def unpack(payload: WeightPayload) -> dict[str, torch.Tensor]:
    """``WeightPayload`` -> flat state dict of tensors sharing the arrays' memory (no copy).

    The arrays Ray returns are read-only; the tensors are only ever read (copied into the
    module), so the non-writable warning is silenced.
    """
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-writable.*")
        for name, arr in payload.tensors.items():
            t = torch.from_numpy(arr)
            dtype = payload.viewed.get(name)
            if dtype is not None:
                if dtype not in _BY_NAME:
                    raise ValueError(
                        f"weights {name!r}: unknown viewed dtype {dtype!r}; "
                        f"expected one of {sorted(_BY_NAME)}"
                    )
                t = t.view(_BY_NAME[dtype])
            out[name] = t
    return out
