"""Attention blocks over 2-D feature maps, for the ``pan`` and ``manet`` segmentation decoders.

- `FeaturePyramidAttention` and `GlobalAttentionUpsample`: PAN's FPA and GAU (Li et al. 2018).
- `PositionAttention` and `ChannelGate`: MA-Net's position-wise attention (PAB) and the squeeze-and-
  excitation gates of its multi-scale fusion blocks (Fan et al. 2020; Hu et al. 2018).

PAN's convolutions have no bias before their BatchNorm (`edh.layers.conv.ConvNormAct`). smp 0.6.0's
keep one, which BatchNorm cancels (its gradient is zero in training); a converter folds an smp bias
``b`` into the running mean (``running_mean - b``) and gets the same outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edh.layers.conv import ConvNormAct


def resize(x: torch.Tensor, like: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``x`` interpolated to ``like``'s height and width (bilinear with aligned corners, as PAN)."""
    return F.interpolate(x, size=like.shape[-2:], mode=mode, align_corners=True if mode == "bilinear" else None)


class FeaturePyramidAttention(nn.Module):
    """PAN's Feature Pyramid Attention: a U-shaped 7x7 / 5x5 / 3x3 pyramid over three 2x max-pooled
    scales gives a one-channel spatial attention map that weights a 1x1 projection of the input; a
    global-pooling branch is added.

    Max pooling rounds up (``ceil_mode``), so maps of any size, even 1x1, keep at least one cell; on even
    sizes this is smp's floor pooling.

    Args:
        in_channels: channels of the input map.
        out_channels: channels of the output.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        pool = lambda: nn.MaxPool2d(2, 2, ceil_mode=True)  # noqa: E731
        self.glob = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvNormAct(in_channels, out_channels, 1))
        self.project = ConvNormAct(in_channels, out_channels, 1)
        self.down1 = nn.Sequential(pool(), ConvNormAct(in_channels, 1, 7))
        self.down2 = nn.Sequential(pool(), ConvNormAct(1, 1, 5))
        self.down3 = nn.Sequential(pool(), ConvNormAct(1, 1, 3), ConvNormAct(1, 1, 3))
        self.side2 = ConvNormAct(1, 1, 5)
        self.side1 = ConvNormAct(1, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        glob = self.glob(x)  # (B, out, 1, 1)
        projected = self.project(x)  # (B, out, H, W)
        x1 = self.down1(x)  # (B, 1, H/2, W/2)
        x2 = self.down2(x1)  # (B, 1, H/4, W/4)
        x3 = self.down3(x2)  # (B, 1, H/8, W/8)
        attention = self.side2(x2) + resize(x3, x2)  # (B, 1, H/4, W/4)
        attention = self.side1(x1) + resize(attention, x1)  # (B, 1, H/2, W/2)
        attention = resize(attention, x)  # (B, 1, H, W)
        return attention * projected + glob  # (B, out, H, W)


class GlobalAttentionUpsample(nn.Module):
    """PAN's Global Attention Upsample: the high-level map, globally pooled to a channel gate, weights
    a 3x3 projection of the low-level map; the high-level map, up-sampled, is added.

    Args:
        in_channels: channels of the low-level (higher resolution) map.
        out_channels: channels of the high-level map and of the output.
        mode: up-sampling of the high-level map: ``bilinear`` (aligned corners) or ``nearest``.

    Shapes: low ``(B, in_channels, H, W)``, high ``(B, out_channels, h, w)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "bilinear") -> None:
        super().__init__()
        self.mode = mode
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvNormAct(out_channels, out_channels, 1, act=False),
                                  nn.Sigmoid())
        self.project = ConvNormAct(in_channels, out_channels, 3)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        gate = self.gate(high)  # (B, out, 1, 1)
        return resize(high, low, self.mode) + self.project(low) * gate  # (B, out, H, W)


class PositionAttention(nn.Module):
    """MA-Net's position-wise attention block (PAB): every position attends over all positions
    (queries and keys: 1x1 convs to ``key_channels``; values: a 3x3 conv), the result is added to
    the input, then a 3x3 conv.

    This follows the paper (a softmax over the keys of each query, the values' layout kept). smp 0.6.0's
    ``PABBlock`` has the same layers but takes one softmax over all query-key pairs of an image and
    reshapes ``(B, HW, C)`` straight to ``(B, C, H, W)``; weights carry over, outputs differ.

    Args:
        channels: channels of the map.
        key_channels: width of queries and keys (smp's ``decoder_pab_channels``: 64).

    Shapes: ``(B, channels, H, W)`` -> ``(B, channels, H, W)``.
    """

    def __init__(self, channels: int, key_channels: int = 64) -> None:
        super().__init__()
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.query(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, K)
        key = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, K)
        value = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C)
        attended = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (B, 1, HW, C): unscaled, as the paper
        return self.out(x + attended.squeeze(1).transpose(1, 2).reshape_as(x))  # (B, C, H, W)


class ChannelGate(nn.Sequential):
    """A squeeze-and-excitation gate (Hu et al. 2018): global average, 1x1 conv down to
    ``channels / reduction`` (at least 1), ReLU, 1x1 conv back, sigmoid. Returns the gate, not the
    gated map, so gates can be combined first (MA-Net adds two).

    Shapes: ``(B, channels, H, W)`` -> ``(B, channels, 1, 1)`` in ``(0, 1)``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        reduced = max(1, channels // reduction)
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, reduced, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(reduced, channels, 1), nn.Sigmoid())
