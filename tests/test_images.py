"""Cameras in envactor's own policies: the ``observation_encoder`` block (HWC uint8 pixels,
divided by 255 once, at the policy boundary) and ``flow``/``act`` built with camera features."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from envactor.nn import ComponentError, ObservationEncoder, build_component
from envactor.normalize import Normalizer
from envactor.policy import Policy, PolicyError, build_policy
from envactor.policy.boundary import ObservationError
from envactor.policy.features import encoder_overrides

S, TOP, WRIST = "observation.state", "observation.images.top", "observation.images.wrist"
FEATURES: dict[str, dict[str, Any]] = {
    S: {"shape": [4], "dtype": "float32", "norm": "mean_std"},
    TOP: {"shape": [12, 16, 3], "dtype": "uint8", "norm": "image"},
    WRIST: {"shape": [8, 8, 3], "dtype": "uint8", "norm": "image"},
}
SMALL_CAMERA = {"camera_dim": 6, "camera_channels": [4, 8], "hidden_dims": [16], "out_dim": 10}
# flow/act with small nets; their encoder is replaced as `envactor train` does for cameras
SMALL = {
    "flow": [
        "model.components.encoder.hidden_dims=[32]",
        "model.components.encoder.out_dim=32",
        "model.components.encoder.camera_channels=[4,8]",
        "model.components.velocity.hidden_dims=[32]",
        "model.components.velocity.time_dim=16",
    ],
    "act": [
        "model.components.encoder.hidden_dims=[32]",
        "model.components.encoder.out_dim=32",
        "model.components.encoder.camera_channels=[4,8]",
        "model.components.decoder.d_model=16",
        "model.components.decoder.nhead=2",
        "model.components.decoder.num_layers=1",
        "model.components.decoder.dim_feedforward=32",
        "model.components.decoder.dropout=0.0",
        "model.components.decoder.num_cond_tokens=2",
    ],
}
STATS = {
    S: {"mean": np.full(4, 0.5), "std": np.full(4, 2.0)},
    "action": {"min": -np.ones(2), "max": np.ones(2), "mean": np.zeros(2), "std": np.ones(2)},
}


def encoder(features: dict[str, Any] = FEATURES, **params: Any) -> ObservationEncoder:
    torch.manual_seed(0)
    cfg = {"type": "observation_encoder", "input_features": features, **SMALL_CAMERA, **params}
    enc = build_component(cfg, name="encoder")
    assert isinstance(enc, ObservationEncoder)
    return enc


def pixels(rng: np.random.Generator, batch: int, key: str) -> np.ndarray:
    return rng.integers(0, 256, (batch, *FEATURES[key]["shape"]), dtype=np.uint8)


def observation(batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        S: rng.normal(size=(batch, 4)).astype(np.float32),
        TOP: pixels(rng, batch, TOP),
        WRIST: pixels(rng, batch, WRIST),
    }


def camera_policy(name: str, features: dict[str, Any] = FEATURES) -> Policy:
    """``name`` built for ``features`` the way the trainer sizes a built-in policy."""
    from envactor.config import load_policy_config
    from envactor.policy.build import packaged_config

    given = [f"policy.params.input_features={json.dumps(features)}", "policy.params.action_dim=2"]
    components = load_policy_config(packaged_config(name), [*given, *SMALL[name]]).components
    torch.manual_seed(0)
    policy = build_policy(
        name, overrides=[*given, *encoder_overrides(components, features), *SMALL[name]]
    )
    modes = {**{k: v["norm"] for k, v in features.items()}, "action": policy.params.action_norm}
    policy.normalizer = Normalizer(modes, {k: v for k, v in STATS.items() if k in modes})
    return policy


# ---------------------------------------------------------------------------- the block
def test_encoder_reads_state_and_each_camera_channels_last() -> None:
    enc = encoder()
    assert enc.state_keys == [S] and enc.camera_keys == [TOP, WRIST]
    assert enc.state_dim == 4 and len(enc.camera_encoders) == 2 and enc.mlp.in_dim == 4 + 2 * 6
    rng = np.random.default_rng(0)
    obs = {S: torch.randn(2, 4), TOP: torch.rand(2, 12, 16, 3), WRIST: torch.rand(2, 8, 8, 3)}
    out = enc(obs)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the camera part is the conv encoder of the image as (B, C, H, W)
    top = enc.camera_encoders[0](obs[TOP].permute(0, 3, 1, 2))
    wrist = enc.camera_encoders[1](obs[WRIST].permute(0, 3, 1, 2))
    manual = enc.mlp(torch.cat([obs[S], top, wrist], dim=1))
    torch.testing.assert_close(out, manual, rtol=0, atol=0)
    # every input moves the output
    for key in (S, TOP, WRIST):
        changed = dict(obs)
        changed[key] = torch.from_numpy(rng.random(tuple(obs[key].shape), dtype=np.float32))
        assert (enc(changed) - out).abs().max() > 1e-4, key


def test_shared_camera_encoder() -> None:
    same = {S: FEATURES[S], TOP: FEATURES[WRIST], WRIST: FEATURES[WRIST]}
    enc = encoder(same, share_camera_encoder=True)
    assert len(enc.camera_encoders) == 1
    assert sum(p.numel() for p in enc.parameters()) < sum(
        p.numel() for p in encoder(same).parameters()
    )
    obs = {S: torch.zeros(1, 4), TOP: torch.rand(1, 8, 8, 3), WRIST: torch.rand(1, 8, 8, 3)}
    swapped = {**obs, TOP: obs[WRIST], WRIST: obs[TOP]}
    assert (enc(obs) - enc(swapped)).abs().max() > 1e-5  # cameras keep their own positions
    with pytest.raises(ComponentError, match=r"share_camera_encoder needs cameras of one shape"):
        encoder(share_camera_encoder=True)


def test_encoder_shape_and_dtype_errors_name_the_camera() -> None:
    enc = encoder()
    obs = {S: torch.zeros(2, 4), TOP: torch.rand(2, 12, 16, 3), WRIST: torch.rand(2, 8, 8, 3)}
    with pytest.raises(
        ValueError,
        match=r"camera 'observation.images.top': expected shape \(B, 12, 16, 3\) \(H, W, C: "
        r"channels last\), got \(2, 3, 12, 16\)",
    ):
        enc({**obs, TOP: torch.rand(2, 3, 12, 16)})
    with pytest.raises(ValueError, match=r"feature 'observation.state': expected shape \(B, 4\)"):
        enc({**obs, S: torch.zeros(2, 5)})
    with pytest.raises(ValueError, match=r"missing feature 'observation.images.wrist'"):
        enc({S: obs[S], TOP: obs[TOP]})
    with pytest.raises(ValueError, match=r"'observation.images.wrist': expected float pixels"):
        enc({**obs, WRIST: torch.zeros(2, 8, 8, 3, dtype=torch.uint8)})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"shape": [3, 12, 16], "dtype": "uint8", "norm": "image"},
         r"C=16 channels, expected at most 4; channels first\? write it as \[12, 16, 3\]"),
        ({"shape": [12, 16], "dtype": "uint8", "norm": "image"},
         r"camera 'observation.images.top': expected shape \[H, W, C\]"),
        ({"shape": [12, 16, 3], "dtype": "uint8", "norm": "identity"},
         r"a uint8 image of shape \[12, 16, 3\] needs norm 'image'"),
        ({"dtype": "uint8"}, r"expected a mapping with 'shape'"),
        ({"shape": [4, 4, 3], "dtype": "uint8", "norm": "image"},
         r"camera 'observation.images.top' \(4x4x3\): pooling 'spatial_softmax' needs a feature "
         r"map of more than one position; 2 conv stage\(s\) of stride 2 reduce 4x4 to 1x1"),
    ],
)  # fmt: skip
def test_encoder_refuses_bad_camera_declarations(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ComponentError, match=message):
        encoder({S: FEATURES[S], TOP: spec})


def test_encoder_overrides_follow_the_features() -> None:
    mlp = {"type": "mlp", "in_dim": 3, "out_dim": 64, "hidden_dims": [8], "activation": "gelu"}
    state_only = {S: FEATURES[S], "observation.extra": {"shape": [2, 3]}}
    assert encoder_overrides({"encoder": mlp}, state_only) == ["model.components.encoder.in_dim=10"]
    (swap,) = encoder_overrides({"encoder": mlp}, FEATURES)
    key, _, value = swap.partition("=")
    assert key == "model.components.encoder"
    assert json.loads(value) == {
        "type": "observation_encoder",
        "out_dim": 64,
        "hidden_dims": [8],
        "activation": "gelu",
        "input_features": "${policy.params.input_features}",
    }
    assert encoder_overrides({"encoder": {"type": "observation_encoder"}}, FEATURES) == [
        "model.components.encoder.input_features=${policy.params.input_features}"
    ]
    assert encoder_overrides({"encoder": mlp}, state_only, n_obs_steps=3) == [
        "model.components.encoder.in_dim=30"  # the flattened history of 3 frames
    ]
    assert encoder_overrides({"net": mlp}, FEATURES) == []
    assert encoder_overrides({"encoder": {"type": "transformer_encoder"}}, FEATURES) == []


# ---------------------------------------------------------------------------- the policies
@pytest.mark.parametrize("name", ["flow", "act"])
def test_policy_predicts_from_uint8_hwc_cameras(name: str) -> None:
    policy = camera_policy(name)
    assert type(policy.components["encoder"]).__name__ == "ObservationEncoder"
    obs = observation()
    policy.set_env_seeds({i: i for i in range(3)})
    chunk = policy.predict(obs)
    assert chunk.shape == (3, 8, 2) and chunk.dtype == np.float32 and np.isfinite(chunk).all()
    for key in (TOP, WRIST):  # each camera changes the chunk
        other = {**obs, key: 255 - obs[key]}
        policy.set_env_seeds({i: i for i in range(3)})
        assert np.abs(policy.predict(other) - chunk).max() > 1e-4, key
    with pytest.raises(ObservationError, match=r"\['observation.images.top'\]: expected shape "
                       r"\(B, 12, 16, 3\), got \(3, 3, 12, 16\)"):  # fmt: skip
        policy.predict({**obs, TOP: obs[TOP].transpose(0, 3, 1, 2)})
    with pytest.raises(ObservationError, match=r"expected uint8 \(image\), got torch.float32"):
        policy.predict({**obs, TOP: obs[TOP].astype(np.float32)})
    # learn mode takes uint8 batches as datasets hold them
    policy.learn_mode.init(lr=1e-3)
    batch = {**obs, "action": np.zeros((3, 8, 2), np.float32)}
    assert np.isfinite(policy.learn_mode.forward(batch)["loss"])


def test_pixels_are_divided_by_255_once() -> None:
    """ACT is deterministic: its chunk equals the components run on state normalized by the
    stats and pixels / 255 (divided twice, or not at all, it would not)."""
    policy = camera_policy("act")
    obs = observation(batch=2, seed=4)
    with torch.no_grad():
        policy.eval()
        inputs = {
            S: torch.from_numpy((obs[S] - 0.5) / (2.0 + 1e-8)),
            TOP: torch.from_numpy(obs[TOP]).float() / 255.0,
            WRIST: torch.from_numpy(obs[WRIST]).float() / 255.0,
        }
        normalized = policy.components["decoder"](policy.components["encoder"](inputs))
        assert policy.normalizer is not None
        want = policy.normalizer.unnormalize("action", normalized).numpy()
    np.testing.assert_allclose(policy.predict(obs), want, rtol=1e-5, atol=1e-6)


def test_encoder_features_must_match_the_policy() -> None:
    wrong = {**FEATURES, WRIST: {"shape": [16, 16, 3], "dtype": "uint8", "norm": "image"}}
    given = [f"policy.params.input_features={json.dumps(FEATURES)}", "policy.params.action_dim=2"]
    enc = {"type": "observation_encoder", "out_dim": 32, "input_features": wrong}
    with pytest.raises(
        PolicyError,
        match=r"model.components.encoder.input_features\['observation.images.wrist'\] has shape "
        r"\[16, 16, 3\], policy.params.input_features declares \[8, 8, 3\]; write it as "
        r"\$\{policy.params.input_features\}",
    ):
        build_policy("flow", overrides=[*given, f"model.components.encoder={json.dumps(enc)}"])
    fewer = {"type": "observation_encoder", "out_dim": 32, "input_features": {S: FEATURES[S]}}
    with pytest.raises(PolicyError, match=r"feature 'observation.images.top' is in the policy's"):
        build_policy("act", overrides=[*given, f"model.components.encoder={json.dumps(fewer)}"])


def test_state_only_configs_keep_the_mlp_encoder() -> None:
    for name in ("flow", "act"):
        policy = build_policy(name)
        assert type(policy.components["encoder"]).__name__ == "MLP"


@pytest.mark.parametrize("name", ["flow", "act"])
def test_history_with_cameras_is_refused_naming_the_cameras(name: str) -> None:
    given = [f"policy.params.input_features={json.dumps(FEATURES)}", "policy.params.action_dim=2",
             "policy.params.n_obs_steps=2"]  # fmt: skip
    from envactor.config import load_policy_config
    from envactor.policy.build import packaged_config

    components = load_policy_config(packaged_config(name), [*given, *SMALL[name]]).components
    fitted = [*given, *encoder_overrides(components, FEATURES, 2), *SMALL[name]]
    with pytest.raises(
        PolicyError,
        match=rf"policy {name!r}: policy.params.n_obs_steps=2 with cameras "
        r"\['observation.images.top', 'observation.images.wrist'\]: model.components.encoder "
        r"\(ObservationEncoder\) reads one frame \(B, \*shape\) per key, not a history "
        r"\(B, 2, \*shape\); use n_obs_steps 1 with cameras",
    ):
        build_policy(name, overrides=fitted)
