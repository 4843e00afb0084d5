"""A built-in policy's inputs taken from a dataset: input features, action dimension, encoder size.

``envactor train flow --data ROOT`` builds ``flow`` for ``ROOT``'s observations: every
``observation.*`` feature of the dataset (cameras with ``norm: image``, the others with the
norm the policy's config gives its state) and ``action_dim`` from ``action``'s shape, unless
overrides give them; the encoder is then sized for them and for the policy's ``n_obs_steps``
(``policy.features.encoder_overrides``), and the user's overrides apply last.
A policy YAML file or a checkpoint gives its own features, which are checked against the
dataset instead (``check_dataset``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from envactor.config import load_policy_config
from envactor.config.overrides import parse_override
from envactor.data import DatasetError
from envactor.data.open import Dataset
from envactor.policy.build import packaged_config, resolve_source
from envactor.policy.features import encoder_overrides
from envactor.registry import RegistryError

__all__ = ["dataset_overrides", "features_from_dataset"]

_FEATURES = ("policy", "params", "input_features")
_ACTION_DIM = ("policy", "params", "action_dim")
_ACTION_NAMES = ("policy", "params", "action_names")
_SPEC_DTYPES = {"float32", "float64", "float16", "uint8", "int64", "int32"}


def is_packaged(source: str | Path) -> bool:
    """Whether ``source`` names a registered policy whose packaged YAML it resolves to."""
    if not isinstance(source, str) or not source.isidentifier():
        return False
    try:
        yaml_file, ckpt = resolve_source(source)
        return ckpt is None and yaml_file == packaged_config(source)
    except (FileNotFoundError, RegistryError):
        return False


def features_from_dataset(
    dataset: Dataset, declared: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Input features for every ``observation.*`` feature of ``dataset``, in its order.

    Cameras: ``{shape: [H, W, C], dtype: uint8, norm: image}``. Others keep the norm
    ``declared`` (a config's ``input_features``) gives that key, else the norm of its first
    non-image feature, else ``mean_std``.
    """
    declared = dict(declared or {})
    default_norm = next(
        (
            s.get("norm", "mean_std")
            for s in declared.values()
            if isinstance(s, Mapping) and s.get("norm") != "image"
        ),
        "mean_std",
    )
    cameras = set(dataset.camera_keys)
    out: dict[str, dict[str, Any]] = {}
    for key in dataset.data_keys:
        if not key.startswith("observation."):
            continue
        feat = dataset.features[key]
        if key in cameras:
            out[key] = {"shape": list(feat.shape), "dtype": "uint8", "norm": "image"}
            continue
        if feat.dtype not in _SPEC_DTYPES:
            raise DatasetError(
                f"{dataset.info_path}: observation {key!r} is {feat.dtype}, which a policy "
                "cannot read; give the input features without it "
                "(-o policy.params.input_features=...)"
            )
        mine = declared.get(key)
        norm = mine.get("norm", default_norm) if isinstance(mine, Mapping) else default_norm
        if norm == "image":
            norm = default_norm
        out[key] = {"shape": list(feat.shape), "dtype": feat.dtype, "norm": norm}
        if feat.names is not None:
            out[key]["names"] = list(feat.names)
    if not out:
        raise DatasetError(
            f"{dataset.info_path}: no observation.* features to take the policy's inputs from; "
            f"features are {dataset.data_keys}"
        )
    return out


def dataset_overrides(source: str | Path, overrides: Sequence[str], dataset: Dataset) -> list[str]:
    """Overrides to apply *before* ``overrides`` that fit the built-in policy ``source`` to
    ``dataset``.

    Empty unless ``source`` is a registered policy name: a YAML file or a checkpoint keeps its
    own features. ``policy.params.input_features`` comes from the dataset unless an override
    replaces the whole mapping (one that changes a key inside it applies on top of the
    dataset's), ``policy.params.action_dim`` unless an override sets it; the encoder is sized
    for the features that result (the user's overrides of it still apply after).
    """
    if not is_packaged(source):
        return []
    given = [parse_override(o).path for o in overrides]
    yaml_file = packaged_config(str(source))
    extra: list[str] = []
    if _FEATURES not in given:
        declared = load_policy_config(yaml_file, overrides).params.get("input_features")
        features = features_from_dataset(dataset, declared)
        extra.append(f"policy.params.input_features={json.dumps(features)}")
    if _ACTION_DIM not in given:
        action = dataset.features.get("action")
        if action is None or len(action.shape) != 1:
            found = "no 'action' feature" if action is None else f"shape {list(action.shape)}"
            raise DatasetError(
                f"{dataset.info_path}: expected an 'action' feature of shape [A], found {found}"
            )
        extra.append(f"policy.params.action_dim={action.shape[0]}")
        if action.names is not None and _ACTION_NAMES not in given:
            extra.append(f"policy.params.action_names={json.dumps(list(action.names))}")
    cfg = load_policy_config(yaml_file, [*extra, *overrides])
    n_obs = cfg.params.get("n_obs_steps", 1)
    n_obs = n_obs if isinstance(n_obs, int) and not isinstance(n_obs, bool) and n_obs > 0 else 1
    extra += encoder_overrides(cfg.components, cfg.params.get("input_features") or {}, n_obs)
    return extra
