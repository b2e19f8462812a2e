"""Pyramid pooling (Zhao et al. 2017, PSPNet): a map pooled to a few grid sizes, each re-projected and
up-sampled back, concatenated with the map. Shared by the ``pspnet`` and ``upernet`` decoders.

`adaptive_avg_pool2d` computes PyTorch's adaptive average pooling as two small matrix products, so
it exports to ONNX for any input size (TorchScript's exporter refuses ``AdaptiveAvgPool2d`` unless
the input size is a multiple of the output size, and fixes that size in the graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edh.layers.conv import ConvNormAct


def pooling_matrix(length: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``(bins, length)`` weights that average each of ``bins`` adaptive-pooling windows.

    Window ``k`` covers ``[floor(k * L / bins), ceil((k + 1) * L / bins))``, as ``AdaptiveAvgPool``.
    ``L`` is taken from ``torch.arange(length)`` as a tensor, so a trace keeps it symbolic.
    """
    positions = torch.arange(length, device=like.device)  # (L,)
    total = positions[-1:] + 1  # (1,): L
    k = torch.arange(bins, device=like.device)[:, None]  # (bins, 1)
    start = torch.div(k * total, bins, rounding_mode="floor")  # (bins, 1)
    end = torch.div((k + 1) * total + bins - 1, bins, rounding_mode="floor")  # (bins, 1)
    inside = ((positions[None] >= start) & (positions[None] < end)).to(like.dtype)  # (bins, L)
    return inside / inside.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` (the same windows and values) that exports to ONNX at any size.

    Shapes: ``(B, C, H, W)`` -> ``(B, C, size, size)``.
    """
    if size == 1:
        return x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    rows = pooling_matrix(x.shape[-2], size, x)  # (size, H)
    cols = pooling_matrix(x.shape[-1], size, x)  # (size, W)
    return rows @ x @ cols.transpose(0, 1)  # (B, C, size, size)


class PyramidPooling(nn.Module):
    """Average-pool to each grid size, 1x1 conv-norm-ReLU to ``branch_channels``, bilinear back to the
    map's size, and concatenate with the map.

    Args:
        in_channels: channels of the map.
        branch_channels: channels of each pooled branch.
        sizes: the grid sizes (PSPNet: 1, 2, 3, 6).
        norm: BatchNorm in the branches' convs (without it: a conv with bias).
        norm_global: BatchNorm also in the 1x1 grid's branch (smp's PSPNet: off; its UPerNet: on).
        align_corners: of the bilinear up-sampling (smp's PSPNet: True; its UPerNet: False).
        map_first: the map before the branches in the concatenation (UPerNet) or after them (PSPNet).

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, in_channels + len(sizes) * branch_channels, H, W)``.
    """

    def __init__(self, in_channels: int, branch_channels: int, sizes: tuple[int, ...] = (1, 2, 3, 6),
                 norm: bool = True, norm_global: bool = True, align_corners: bool = False,
                 map_first: bool = True) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.align_corners, self.map_first = align_corners, map_first
        self.branches = nn.ModuleList(
            ConvNormAct(in_channels, branch_channels, 1, norm=norm and (norm_global or size > 1)) for size in self.sizes
        )
        self.out_channels = in_channels + len(self.sizes) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [
            F.interpolate(branch(adaptive_avg_pool2d(x, size)), size=x.shape[-2:], mode="bilinear",
                          align_corners=self.align_corners)  # (B, branch_channels, H, W)
            for size, branch in zip(self.sizes, self.branches)
        ]
        return torch.cat([x, *pooled] if self.map_first else [*pooled, x], dim=1)  # (B, out_channels, H, W)
