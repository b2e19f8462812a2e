"""The contracting path of the original U-Net (Ronneberger et al. 2015).

Each level: two 3x3 convolutions with ReLU (optionally BatchNorm); every level after the first
starts with a 2x2 max-pool. Widths double per level from ``base_width`` (64, 128, 256, 512, 1024
in the paper). Convolutions are padded (``same``), as in most re-implementations, so the decoder
needs no cropping of skips and the output has the input's size; the paper's unpadded convs lose
92 pixels per side (572 in, 388 out). Padding changes no parameter count.
"""

from __future__ import annotations

import torch
from torch import nn

from edh.encoders.base import Encoder
from edh.core.features import FeatureSpec
from edh.layers.conv import ConvNormAct
from edh.core.registry import register_encoder
from edh.utils.weights import load_encoder_weights


@register_encoder("unet_encoder")
class UnetEncoder(Encoder):
    """U-Net contracting path.

    Args:
        in_channels: image channels.
        base_width: channels of the first level; level ``i`` has ``base_width * 2**i``.
        depth: number of levels (5 in the paper: four poolings).
        norm: BatchNorm after each conv (not in the paper; helps training from scratch).
        weights: a local weight file saved from this encoder.

    Shapes: ``(B, in_channels, H, W)`` -> ``[(B, base_width * 2**i, ceil(H / 2**i), ceil(W / 2**i))]``
    for ``i`` in ``0..depth-1`` (pooling rounds up, so any size works).
    """

    default_input_size = (256, 256)

    def __init__(self, in_channels: int = 3, base_width: int = 64, depth: int = 5, norm: bool = False,
                 weights: str | None = None) -> None:
        super().__init__()
        if depth < 2 or base_width < 1:
            raise ValueError(f"unet_encoder needs depth >= 2 and base_width >= 1, got depth={depth}, "
                             f"base_width={base_width}")
        self.in_channels = in_channels
        widths = [base_width * 2**i for i in range(depth)]
        levels, previous = [], in_channels
        for index, width in enumerate(widths):
            pool = [nn.MaxPool2d(2, 2, ceil_mode=True)] if index else []
            levels.append(nn.Sequential(*pool, ConvNormAct(previous, width, 3, norm=norm),
                                        ConvNormAct(width, width, 3, norm=norm)))
            previous = width
        self.levels = nn.ModuleList(levels)
        self.out_spec = FeatureSpec("pyramid", tuple(widths), tuple(2**i for i in range(depth)),
                                    tuple(f"level{i}" for i in range(depth)))
        if weights:
            load_encoder_weights(self, weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)  # (B, base_width * 2**i, ceil(H / 2**i), ceil(W / 2**i))
            features.append(x)
        return features
