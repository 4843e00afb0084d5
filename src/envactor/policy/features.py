"""Helpers shared by the built-in neural policies: feature flattening, dimension checks, noise."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from envactor.policy.base import EnvIds, Policy, PolicyError


def flat_observation(obs: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """Concatenate the flattened observation features in declared order: (B, sum of sizes)."""
    if len(keys) == 1:
        x = obs[keys[0]]
        return (x if x.dim() == 2 else x.flatten(1)).float()
    return torch.cat([obs[k].flatten(1).float() for k in keys], dim=1)


def feature_size(policy: Policy) -> int:
    """Width of the concatenated, flattened observation features the encoder reads."""
    total = 0
    for spec in policy.input_features.values():
        n = 1
        for d in spec.shape:
            n *= d
        total += n
    return total


def check_dims(policy: Policy, component: str, expected: Mapping[str, tuple[int, str]]) -> None:
    """Raise PolicyError when ``components[component].<attr>`` differs from what params imply.

    ``expected`` maps attribute -> (value, where the value comes from). Modules without the
    attribute (a custom block) are not checked.
    """
    module = policy.components[component]
    for attr, (want, origin) in expected.items():
        found = getattr(module, attr, None)
        if isinstance(found, int) and found != want:
            hint = f" or write it as ${{{origin}}}" if "." in origin else ""
            raise PolicyError(
                f"policy {policy.name!r}: model.components.{component}.{attr} is {found}, "
                f"expected {want} ({origin}); change them together{hint}"
            )


def gaussian_explore(
    policy: Policy, chunk: torch.Tensor, env_ids: EnvIds, std: float
) -> torch.Tensor:
    """``chunk + std * N(0, I)`` with per-env seeded noise (normalized action units)."""
    if std <= 0:
        return chunk
    return chunk + std * policy._randn(env_ids, *policy.action_shape).to(chunk.dtype)


def edge_fill(action: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """``action`` (B, H, A) with each padded step replaced by the last unpadded one before it.

    The noisy input ``x_tau`` mixes every step of the chunk, so masking the loss alone would
    still let whatever sits in padded slots steer the prediction of the real steps. Steps
    before the first unpadded one take that first unpadded action (all padded: the last step).
    """
    h = action.shape[1]
    steps = torch.arange(h, device=action.device).expand_as(pad)
    last = torch.where(pad, -1, steps).cummax(dim=1).values  # (B, H), -1 before the first real step
    first = torch.where(pad, h, steps).min(dim=1, keepdim=True).values.clamp_max(h - 1)
    idx = torch.where(last < 0, first, last)
    return action.gather(1, idx[..., None].expand_as(action))


def check_encoder_head(policy: Policy, head: str) -> None:
    """Check ``encoder.in_dim`` against the features and ``head``'s horizon, action_dim and
    cond_dim against the params and ``encoder.out_dim`` (the encoder -> chunk-head layout)."""
    check_dims(policy, "encoder", {"in_dim": (feature_size(policy), "sum of input_features sizes")})
    expected = {
        "horizon": (policy.params.horizon, "policy.params.horizon"),
        "action_dim": (policy.params.action_dim, "policy.params.action_dim"),
    }
    cond = getattr(policy.components["encoder"], "out_dim", None)
    if isinstance(cond, int):
        expected["cond_dim"] = (cond, "model.components.encoder.out_dim")
    check_dims(policy, head, expected)
