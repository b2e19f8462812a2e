"""The blocks of YOLOv8-style networks (CSP-Darknet encoder, PAN neck, detection head).

Written from the public description of YOLOv8 (and of the CSP idea: Wang et al. 2020, "CSPNet";
the SPP-fast pooling of YOLOv5): every conv is conv -> BatchNorm (eps 1e-3, momentum 0.03) -> SiLU
without a conv bias; ``C2f`` splits a 1x1 conv's output in two halves, runs ``n`` bottlenecks on the
second half one after another and concatenates both halves with every bottleneck's output before a
last 1x1 conv; ``SPPF`` max-pools three times in a row (kernel 5, stride 1) and concatenates the four maps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # YOLOv8's BatchNorm settings (PyTorch's defaults: 1e-5, 0.1)


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded up to a multiple of ``divisor`` (YOLO channel widths are multiples of 8)."""
    return int(math.ceil(value / divisor) * divisor)


def scaled_width(channels: int, width_multiple: float, max_channels: int) -> int:
    """A preset's width of a layer of ``channels`` in the full-size design: capped at ``max_channels``,
    scaled by ``width_multiple``, rounded up to a multiple of 8."""
    return make_divisible(min(channels, max_channels) * width_multiple, 8)


def scaled_depth(repeats: int, depth_multiple: float) -> int:
    """A preset's number of blocks where the full-size design has ``repeats`` (at least one)."""
    return max(round(repeats * depth_multiple), 1) if repeats > 1 else repeats


class ConvBNSiLU(nn.Sequential):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d (eps 1e-3, momentum 0.03) -> SiLU.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
                         nn.SiLU(inplace=True))


class Bottleneck(nn.Module):
    """Two 3x3 ``ConvBNSiLU`` (hidden width ``expansion * out_channels``), plus the input when
    ``shortcut`` and the widths agree.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True, expansion: float = 0.5) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.cv1 = ConvBNSiLU(in_channels, hidden, 3)
        self.cv2 = ConvBNSiLU(hidden, out_channels, 3)
        self.add = shortcut and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cv2(self.cv1(x))
        return x + out if self.add else out


class C2f(nn.Module):
    """CSP block with two convs and ``n`` bottlenecks whose outputs are all kept (YOLOv8's ``C2f``).

    A 1x1 conv to ``2 c`` channels (``c = out_channels * expansion``) is split into halves ``a, b``;
    bottleneck ``i`` (width ``c``, expansion 1) reads the previous one's output (the first reads
    ``b``); ``[a, b, m_1, ..., m_n]`` concatenated (``(2 + n) c`` channels) go through a last 1x1 conv.

    Args:
        shortcut: residual bottlenecks (YOLOv8's backbone: True; its neck: False).

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, shortcut: bool = False,
                 expansion: float = 0.5) -> None:
        super().__init__()
        self.hidden = int(out_channels * expansion)
        self.cv1 = ConvBNSiLU(in_channels, 2 * self.hidden, 1)
        self.cv2 = ConvBNSiLU((2 + n) * self.hidden, out_channels, 1)
        self.m = nn.ModuleList([Bottleneck(self.hidden, self.hidden, shortcut, expansion=1.0) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, dim=1))  # 2 x (B, c, H, W)
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))  # (B, (2 + n) c, H, W) -> (B, out_channels, H, W)


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: 1x1 conv to half the width, three max-pools in a row (kernel
    ``kernel_size``, stride 1: receptive fields 5, 9, 13), the four maps concatenated, 1x1 conv.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = ConvBNSiLU(in_channels, hidden, 1)
        self.cv2 = ConvBNSiLU(hidden * 4, out_channels, 1)
        self.m = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [self.cv1(x)]
        for _ in range(3):
            pooled.append(self.m(pooled[-1]))
        return self.cv2(torch.cat(pooled, dim=1))
