"""A small convolutional encoder for tiny images (8x8 digits, 28x28 Fashion-MNIST)."""

from __future__ import annotations

import torch
from torch import nn

from edh.encoders.base import Encoder
from edh.core.features import FeatureSpec
from edh.layers.conv import ConvNormAct
from edh.core.registry import register_encoder
from edh.utils.weights import load_encoder_weights


@register_encoder("conv")
class ConvEncoder(Encoder):
    """Stages of two 3x3 conv-BN-ReLU blocks; every stage after the first halves the resolution.

    Args:
        in_channels: image channels.
        channels: width of each stage; the pyramid has one level per stage.
        weights: a local weight file saved from this encoder.

    Shapes:
        input ``(B, in_channels, H, W)`` -> ``[(B, channels[i], H / 2**i, W / 2**i)]``.
    """

    default_input_size = (32, 32)

    def __init__(self, in_channels: int = 1, channels: list[int] = (32, 64, 128), weights: str | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        stages, previous = [], in_channels
        for index, width in enumerate(channels):
            stride = 1 if index == 0 else 2
            stages.append(nn.Sequential(ConvNormAct(previous, width, 3, stride), ConvNormAct(width, width, 3)))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.out_spec = FeatureSpec("pyramid", tuple(channels), tuple(2**i for i in range(len(channels))),
                                    tuple(f"stage{i}" for i in range(len(channels))))
        if weights:
            load_encoder_weights(self, weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H / 2**i, W / 2**i)
            features.append(x)
        return features
