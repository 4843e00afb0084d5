"""``conv_image_encoder``: a small strided CNN from an image to a feature vector."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import nn

from envactor.registry import COMPONENT_REGISTRY

from ._common import Activation, check_positive, make_activation


class SpatialSoftmax(nn.Module):
    """Per-channel softmax over positions -> expected ``(x, y)`` in ``[-1, 1]``: ``(B, C, h, w) ->
    (B, 2C)`` as ``[x_0, y_0, x_1, y_1, ...]``."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij"
        )
        self.register_buffer("grid", torch.stack([xs, ys], dim=-1).reshape(-1, 2), persistent=False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, c = feats.shape[:2]
        attn = torch.softmax(feats.reshape(b, c, -1), dim=-1)  # (B, C, h*w)
        grid: torch.Tensor = self.grid  # type: ignore[assignment]
        return (attn @ grid.to(attn.dtype)).reshape(b, 2 * c)


@COMPONENT_REGISTRY.register("conv_image_encoder")
class ConvImageEncoder(nn.Module):
    """``Conv(stride) -> activation`` per entry of ``channels``, a pooling, then ``Linear``.

    Input pixels are floats in ``[0, 1]``, mapped to ``[-1, 1]`` inside. uint8 pixels are refused:
    a policy declares its cameras with ``norm: image`` and its boundary divides by 255, the one
    place that does (see ``observation_encoder``).

    Args:
        in_channels: image channels ``C``.
        image_size: ``(H, W)`` the encoder is built for; other sizes are an error.
        out_dim: output features.
        channels: output channels of each conv stage.
        kernel_size: conv kernel (odd; padded to keep ``ceil(size / stride)``).
        stride: conv stride of every stage.
        pooling: ``"avg"`` (global average, ``C_last`` features) or ``"spatial_softmax"``
            (expected keypoint coordinates, ``2 * C_last`` features).
        activation: nonlinearity after each conv.
    """

    shapes: ClassVar[dict[str, str]] = {
        "image": "(B, C, H, W) float in [0, 1]",
        "return": "(B, out_dim)",
    }

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        out_dim: int,
        channels: Sequence[int] = (32, 64, 64),
        kernel_size: int = 3,
        stride: int = 2,
        pooling: Literal["avg", "spatial_softmax"] = "avg",
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        check_positive(in_channels=in_channels, out_dim=out_dim, stride=stride)
        check_positive(height=image_size[0], width=image_size[1])
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        if not channels:
            raise ValueError("channels must list at least one conv stage, got []")
        self.in_channels = in_channels
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.out_dim = out_dim
        layers: list[nn.Module] = []
        c_in, (h, w) = in_channels, self.image_size
        pad = kernel_size // 2
        for i, c_out in enumerate(channels):
            check_positive(**{f"channels[{i}]": c_out})
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size, stride, pad),
                make_activation(activation),
            ]
            c_in = c_out
            h = (h + 2 * pad - kernel_size) // stride + 1
            w = (w + 2 * pad - kernel_size) // stride + 1
        self.convs = nn.Sequential(*layers)
        self.feature_map_size = (h, w)
        self.pool: nn.Module
        if pooling == "avg":
            self.pool, n_feats = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), c_in
        elif pooling == "spatial_softmax":
            if h * w == 1:
                raise ValueError(
                    f"pooling 'spatial_softmax' needs a feature map of more than one position; "
                    f"{len(channels)} conv stage(s) of stride {stride} reduce "
                    f"{self.image_size[0]}x{self.image_size[1]} to 1x1 (use fewer stages, a "
                    "smaller stride or pooling 'avg')"
                )
            self.pool, n_feats = SpatialSoftmax(h, w), 2 * c_in
        else:
            raise ValueError(f"pooling must be 'avg' or 'spatial_softmax', got {pooling!r}")
        self.head = nn.Linear(n_feats, out_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in ``[0, 1]`` -> ``(B, out_dim)``."""
        expected = (self.in_channels, *self.image_size)
        if image.dim() != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(
                "conv_image_encoder: expected image of shape "
                f"(B, {', '.join(map(str, expected))}), got {tuple(image.shape)}"
            )
        if not image.is_floating_point():
            raise ValueError(
                f"conv_image_encoder: expected float pixels in [0, 1], got {image.dtype} (declare "
                "the camera with norm 'image': the policy boundary divides uint8 pixels by 255)"
            )
        out: torch.Tensor = self.head(self.pool(self.convs(image * 2.0 - 1.0)))
        return out
