"""``observation_encoder``: a whole observation dict (state vectors and cameras) -> one vector."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from envactor.registry import COMPONENT_REGISTRY

from ._common import Activation, check_positive
from .conv import ConvImageEncoder
from .mlp import MLP

_MAX_CHANNELS = 4  # RGB, RGB-D; more than this on the last axis is read as channels-first


def _shape_of(key: str, spec: Any) -> tuple[int, ...]:
    """The declared shape of feature ``key`` (a mapping with ``shape``)."""
    shape = spec.get("shape") if isinstance(spec, Mapping) else None
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ValueError(
            f"input_features[{key!r}]: expected a mapping with 'shape' (a list of positive "
            f"integers), got {spec!r}"
        )
    return tuple(int(d) for d in shape)


def _is_camera(key: str, spec: Mapping[str, Any], shape: tuple[int, ...]) -> bool:
    """Whether ``key`` is a camera: norm ``image`` (uint8 pixels, HWC); checks its layout."""
    norm, dtype = spec.get("norm", "mean_std"), spec.get("dtype", "float32")
    if norm != "image":
        if dtype == "uint8" and len(shape) == 3:
            raise ValueError(
                f"input_features[{key!r}]: a uint8 image of shape {list(shape)} needs norm "
                f"'image' (the policy boundary turns its pixels into floats in [0, 1]), got "
                f"norm {norm!r}"
            )
        return False
    if len(shape) != 3:
        raise ValueError(
            f"camera {key!r}: expected shape [H, W, C] (channels last), got {list(shape)}"
        )
    if shape[2] > _MAX_CHANNELS:
        hint = (
            f"; channels first? write it as {[shape[1], shape[2], shape[0]]}"
            if shape[0] <= _MAX_CHANNELS
            else ""
        )
        raise ValueError(
            f"camera {key!r}: shape {list(shape)} read as (H, W, C) has C={shape[2]} channels, "
            f"expected at most {_MAX_CHANNELS}{hint}"
        )
    return True


@COMPONENT_REGISTRY.register("observation_encoder")
class ObservationEncoder(nn.Module):
    """State features flattened and concatenated, each camera through a conv encoder, then an MLP.

    Image convention: a camera is an input feature with ``norm: image`` (so ``dtype: uint8``)
    and shape ``[H, W, C]``, channels last, as LeRobot datasets store frames and as gym
    environments render them. Observations carry uint8 ``(B, H, W, C)`` pixels; the policy
    boundary's ``image`` normalization divides by 255 (the only place that does), so this block
    receives floats in ``[0, 1]`` ``(B, H, W, C)`` and permutes them to ``(B, C, H, W)`` for
    ``conv_image_encoder``. Every other feature is state-like: flattened and concatenated in
    declared order (after its own normalization).

    Args:
        input_features: the policy's input features (``${policy.params.input_features}``):
            ``key -> {shape, dtype, norm}``.
        out_dim: output features.
        hidden_dims, activation, dropout, layer_norm: the MLP over ``[state, camera features]``.
        camera_dim: features per camera (each conv encoder's ``out_dim``).
        camera_channels, camera_kernel_size, camera_stride, camera_pooling, camera_activation:
            the ``conv_image_encoder`` of each camera.
        share_camera_encoder: one conv encoder for every camera (they must share one shape;
            their features still enter the MLP at their own positions) instead of one each.
    """

    shapes: ClassVar[dict[str, str]] = {
        "obs": "{key: (B, *shape)}; cameras (B, H, W, C) float in [0, 1]",
        "return": "(B, out_dim)",
    }
    reads_observation_dict: ClassVar[bool] = True
    """Policies pass the whole observation dict, not a flattened vector."""

    def __init__(
        self,
        input_features: Mapping[str, Mapping[str, Any]],
        out_dim: int,
        hidden_dims: Sequence[int] = (256, 256),
        activation: Activation = "relu",
        dropout: float = 0.0,
        layer_norm: bool = False,
        camera_dim: int = 64,
        camera_channels: Sequence[int] = (32, 64, 64),
        camera_kernel_size: int = 3,
        camera_stride: int = 2,
        camera_pooling: Literal["avg", "spatial_softmax"] = "spatial_softmax",
        camera_activation: Activation = "relu",
        share_camera_encoder: bool = False,
    ) -> None:
        super().__init__()
        if not input_features:
            raise ValueError("input_features must declare at least one feature, got {}")
        check_positive(camera_dim=camera_dim)
        self.feature_shapes: dict[str, tuple[int, ...]] = {}
        self.state_keys: list[str] = []
        self.camera_keys: list[str] = []
        for key, spec in input_features.items():
            shape = _shape_of(key, spec)
            self.feature_shapes[key] = shape
            (self.camera_keys if _is_camera(key, spec, shape) else self.state_keys).append(key)
        self.state_dim = sum(_numel(self.feature_shapes[k]) for k in self.state_keys)
        self.out_dim = out_dim
        self.camera_dim = camera_dim
        self.share_camera_encoder = share_camera_encoder
        if share_camera_encoder and len({self.feature_shapes[k] for k in self.camera_keys}) > 1:
            found = ", ".join(f"{k} {list(self.feature_shapes[k])}" for k in self.camera_keys)
            raise ValueError(
                f"share_camera_encoder needs cameras of one shape [H, W, C], got {found}; "
                "set share_camera_encoder: false for one encoder per camera"
            )
        conv_for = self.camera_keys[:1] if share_camera_encoder else self.camera_keys
        self.camera_encoders = nn.ModuleList()
        for key in conv_for:
            h, w, c = self.feature_shapes[key]
            try:
                conv = ConvImageEncoder(
                    in_channels=c,
                    image_size=(h, w),
                    out_dim=camera_dim,
                    channels=camera_channels,
                    kernel_size=camera_kernel_size,
                    stride=camera_stride,
                    pooling=camera_pooling,
                    activation=camera_activation,
                )
            except ValueError as e:
                raise ValueError(f"camera {key!r} ({h}x{w}x{c}): {e}") from None
            self.camera_encoders.append(conv)
        in_dim = self.state_dim + camera_dim * len(self.camera_keys)
        self.mlp = MLP(in_dim, out_dim, hidden_dims, activation, dropout, layer_norm)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{key: (B, *shape)}`` (cameras ``(B, H, W, C)`` in ``[0, 1]``) -> ``(B, out_dim)``."""
        parts: list[torch.Tensor] = []
        for key in self.state_keys:
            x = self._checked(obs, key)
            parts.append(x.flatten(1).float())
        for i, key in enumerate(self.camera_keys):
            image = self._checked(obs, key)
            if not image.is_floating_point():
                raise ValueError(
                    f"observation_encoder: camera {key!r}: expected float pixels in [0, 1] "
                    f"(the policy boundary's 'image' normalization gives them), got {image.dtype}"
                )
            encoder = self.camera_encoders[0 if self.share_camera_encoder else i]
            parts.append(encoder(image.permute(0, 3, 1, 2)))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        out: torch.Tensor = self.mlp(x)
        return out

    def _checked(self, obs: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        x = obs.get(key)
        shape = self.feature_shapes[key]
        if x is None:
            raise ValueError(
                f"observation_encoder: missing feature {key!r}; expected keys "
                f"{list(self.feature_shapes)}, got {sorted(obs)}"
            )
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            what = "camera" if key in self.camera_keys else "feature"
            layout = " (H, W, C: channels last)" if what == "camera" else ""
            raise ValueError(
                f"observation_encoder: {what} {key!r}: expected shape "
                f"(B, {', '.join(map(str, shape))}){layout}, got {tuple(x.shape)}"
            )
        return x

    def extra_repr(self) -> str:
        return f"state={self.state_keys} ({self.state_dim}), cameras={self.camera_keys}"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
