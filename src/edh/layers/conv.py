"""Convolution blocks shared by encoders, decoders and heads."""

from __future__ import annotations

from torch import nn


class ConvNormAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU (``norm=False`` gives conv with bias -> ReLU).

    ``dilation`` spaces the kernel's taps (atrous convolution; padding keeps the size), ``groups``
    splits the channels (``groups=in_channels``: depthwise).

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 norm: bool = True, act: bool = True, dilation: int = 1, groups: int = 1) -> None:
        padding = dilation * (kernel_size // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups,
                      bias=not norm)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
