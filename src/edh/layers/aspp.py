"""Atrous Spatial Pyramid Pooling (Chen et al. 2017, DeepLabV3) and the separable conv of DeepLabV3+.

ASPP looks at one map through parallel branches with growing receptive fields: a 1x1 conv, one
dilated 3x3 conv per atrous rate and a global average pool, then fuses them with a 1x1 conv.
The layout, defaults and parameter counts are torchvision's / smp's ``ASPP``; ``separable``
branches are DeepLabV3+'s depthwise-separable ones (Chen et al. 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edh.layers.conv import ConvNormAct


class SeparableConvNormAct(nn.Sequential):
    """Depthwise (dilated) ``kernel_size`` conv, pointwise 1x1 conv, BatchNorm, ReLU (no conv biases).

    Args:
        in_channels: input channels (the depthwise conv keeps them).
        out_channels: channels of the pointwise conv.
        kernel_size: the depthwise conv's kernel.
        dilation: spacing of the depthwise conv's taps (padding keeps the size).

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                      groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv-BN-ReLU, spread back over the map.

    Its BatchNorm sees one value per channel and sample: training needs batches of 2 or more (as in
    torchvision and smp).

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)`` (constant over H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))  # (B, out, 1, 1)
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])  # (B, out, H, W): bilinear from 1x1 is this


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling.

    Args:
        in_channels: channels of the map it reads (the encoder's deepest level).
        out_channels: channels of every branch and of the result.
        atrous_rates: the dilation of each 3x3 branch (DeepLabV3 at output stride 8: 12, 24, 36).
        separable: depthwise-separable 3x3 branches (DeepLabV3+) instead of full 3x3 convs.
        dropout: dropout after the fusing 1x1 conv.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, atrous_rates: tuple[int, ...] = (12, 24, 36),
                 separable: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        branch = SeparableConvNormAct if separable else ConvNormAct
        self.branches = nn.ModuleList([
            ConvNormAct(in_channels, out_channels, 1),
            *(branch(in_channels, out_channels, 3, dilation=rate) for rate in atrous_rates),
            ImagePooling(in_channels, out_channels),
        ])
        self.project = ConvNormAct(len(self.branches) * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat([branch(x) for branch in self.branches], dim=1)  # (B, n * out, H, W)
        return self.dropout(self.project(branches))  # (B, out, H, W)
