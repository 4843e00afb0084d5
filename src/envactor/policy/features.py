"""Helpers shared by the built-in neural policies: observation encoding, dimension checks, noise,
and the encoder config that follows a policy's input features."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from envactor.policy.base import EnvIds, Policy, PolicyError


def flat_observation(obs: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """Concatenate the flattened observation features in declared order: (B, sum of sizes)."""
    if len(keys) == 1:
        x = obs[keys[0]]
        return (x if x.dim() == 2 else x.flatten(1)).float()
    return torch.cat([obs[k].flatten(1).float() for k in keys], dim=1)


def reads_observation_dict(encoder: nn.Module) -> bool:
    """Whether ``encoder`` takes the observation dict (``observation_encoder``) rather than the
    flattened, concatenated features (``mlp``)."""
    return bool(getattr(type(encoder), "reads_observation_dict", False))


def encode_observation(
    encoder: nn.Module, obs: dict[str, torch.Tensor], keys: list[str], reads_dict: bool
) -> torch.Tensor:
    """``encoder``'s conditioning vector for ``obs``: the dict itself or ``flat_observation``."""
    cond: torch.Tensor = encoder(obs if reads_dict else flat_observation(obs, keys))
    return cond


def feature_size(policy: Policy) -> int:
    """Width of the concatenated, flattened observation features the encoder reads: the sum of
    the input features' sizes, times ``n_obs_steps`` (the history is flattened with them)."""
    total = 0
    for spec in policy.input_features.values():
        n = 1
        for d in spec.shape:
            n *= d
        total += n
    return total * policy.n_obs_steps


def feature_size_origin(policy: Policy) -> str:
    """Where ``feature_size`` comes from, for error messages."""
    n = policy.n_obs_steps
    base = "sum of input_features sizes"
    return base if n == 1 else f"{base} x policy.params.n_obs_steps={n}"


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
    check_history_encoder(policy)
    check_dims(policy, "encoder", {"in_dim": (feature_size(policy), feature_size_origin(policy))})
    check_encoder_features(policy)
    expected = {
        "horizon": (policy.params.horizon, "policy.params.horizon"),
        "action_dim": (policy.params.action_dim, "policy.params.action_dim"),
    }
    cond = getattr(policy.components["encoder"], "out_dim", None)
    if isinstance(cond, int):
        expected["cond_dim"] = (cond, "model.components.encoder.out_dim")
    check_dims(policy, head, expected)


def check_history_encoder(policy: Policy) -> None:
    """Raise PolicyError when ``n_obs_steps > 1`` meets an encoder that reads the observation
    dict (``observation_encoder``): it reads one frame ``(B, *shape)`` per key, while a policy
    with history gets ``(B, n_obs_steps, *shape)``. A flat encoder (``mlp``) reads the history
    flattened, so its ``in_dim`` is ``n_obs_steps`` times the features' size."""
    n = policy.n_obs_steps
    encoder = policy.components["encoder"]
    if n > 1 and reads_observation_dict(encoder):
        cams = [k for k, s in policy.input_features.items() if s.norm == "image"]
        what = f"cameras {cams}" if cams else "an observation_encoder"
        raise PolicyError(
            f"policy {policy.name!r}: policy.params.n_obs_steps={n} with {what}: "
            f"model.components.encoder ({type(encoder).__name__}) reads one frame (B, *shape) "
            f"per key, not a history (B, {n}, *shape); use n_obs_steps 1 with cameras, or an "
            f"mlp encoder over state features (in_dim = {n} x their size)"
        )


def check_encoder_features(policy: Policy) -> None:
    """Raise PolicyError when the encoder's declared features (``observation_encoder``'s
    ``input_features``) differ from ``policy.params.input_features``, naming the key."""
    shapes = getattr(policy.components["encoder"], "feature_shapes", None)
    if not isinstance(shapes, Mapping):
        return
    declared = {k: tuple(s.shape) for k, s in policy.input_features.items()}
    if dict(shapes) == declared:
        return
    fix = "write it as ${policy.params.input_features}"
    for key in [*declared, *shapes]:
        if key not in shapes or key not in declared:
            where, other = ("encoder", "policy") if key not in shapes else ("policy", "encoder")
            raise PolicyError(
                f"policy {policy.name!r}: feature {key!r} is in the {other}'s input_features "
                f"but not the {where}'s (model.components.encoder.input_features: "
                f"{list(shapes)}, policy.params.input_features: {list(declared)}); {fix}"
            )
        if tuple(shapes[key]) != declared[key]:
            raise PolicyError(
                f"policy {policy.name!r}: model.components.encoder.input_features[{key!r}] has "
                f"shape {list(shapes[key])}, policy.params.input_features declares "
                f"{list(declared[key])}; {fix}"
            )
    raise PolicyError(
        f"policy {policy.name!r}: model.components.encoder.input_features lists "
        f"{list(shapes)}, policy.params.input_features {list(declared)} (order differs); {fix}"
    )


def is_camera(spec: Mapping[str, Any]) -> bool:
    """A camera feature: ``norm: image`` (uint8 pixels, shape ``[H, W, C]``)."""
    return spec.get("norm") == "image"


def encoder_overrides(
    components: Mapping[str, Any],
    features: Mapping[str, Mapping[str, Any]],
    n_obs_steps: int = 1,
) -> list[str]:
    """Overrides that size a built-in policy's ``encoder`` for ``features``.

    ``components`` is the config's ``model.components``. With a camera among ``features``, an
    ``mlp`` encoder becomes an ``observation_encoder`` with the same ``out_dim``, hidden layers,
    activation, dropout and layer norm; without one, an ``mlp`` encoder's ``in_dim`` becomes the
    flattened size times ``n_obs_steps`` (the policy's observation history). An
    ``observation_encoder`` reads ``${policy.params.input_features}``. Other encoders (and
    policies without one) are left as they are.
    """
    enc = components.get("encoder")
    if not isinstance(enc, Mapping):
        return []
    kind = enc.get("type")
    key = "model.components.encoder"
    if kind == "observation_encoder":
        return [f"{key}.input_features=${{policy.params.input_features}}"]
    if kind != "mlp":
        return []
    if not any(is_camera(spec) for spec in features.values()):
        size = 0
        for spec in features.values():
            n = 1
            for d in spec["shape"]:
                n *= int(d)
            size += n
        return [f"{key}.in_dim={size * n_obs_steps}"]
    carried = ("out_dim", "hidden_dims", "activation", "dropout", "layer_norm")
    cfg: dict[str, Any] = {"type": "observation_encoder"}
    cfg.update({k: enc[k] for k in carried if k in enc})
    cfg["input_features"] = "${policy.params.input_features}"
    return [f"{key}={json.dumps(cfg)}"]
