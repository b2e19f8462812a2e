"""``manet``: the MA-Net decoder (Fan et al. 2020), as smp's ``MAnet``.

A position-wise attention block (`edh.layers.attention2d.PositionAttention`) on the deepest encoder
level, then one multi-scale fusion attention block (`FusionAttentionBlock`) per shallower level: the
map from below is projected to the skip's channels and up-sampled (nearest, smp's default), gated by
the sum of two channel gates (its own and the skip's), concatenated with the skip and passed through
two 3x3 convs. Blocks without a skip (`edh.decoders.unet.UnetBlock`) follow down to stride 1, as in the U-Net decoder.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edh.core.features import FeatureSpec
from edh.core.registry import register_decoder
from edh.decoders.base import Decoder
from edh.decoders.unet import UnetBlock, plan_channels, run_blocks, skip_plan
from edh.layers.attention2d import ChannelGate, PositionAttention
from edh.layers.conv import ConvNormAct
from edh.ops.crop import crop_to


class FusionAttentionBlock(nn.Module):
    """MA-Net's multi-scale fusion attention block (MFAB).

    Args:
        in_channels: channels of the map from the block below.
        skip_channels: channels of the skip (the encoder level this block reaches).
        out_channels: channels this block produces.
        factor: integer up-sampling factor (the stride ratio between the two levels; 1: none).
        reduction: the channel gates' reduction (smp: 16).
        norm: BatchNorm in the convs.

    Shapes: ``(B, in_channels, h, w)`` and skip ``(B, skip_channels, H', W')`` -> ``(B, out_channels, H', W')``
    with ``H' <= factor * h``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, factor: int = 2,
                 reduction: int = 16, norm: bool = True) -> None:
        super().__init__()
        self.factor = factor
        self.project = nn.Sequential(ConvNormAct(in_channels, in_channels, 3, norm=norm),
                                     ConvNormAct(in_channels, skip_channels, 1, norm=norm))
        self.skip_gate = ChannelGate(skip_channels, reduction)
        self.gate = ChannelGate(skip_channels, reduction)
        self.conv1 = ConvNormAct(2 * skip_channels, out_channels, 3, norm=norm)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.project(x)  # (B, skip, h, w)
        if self.factor > 1:
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")  # (B, skip, f*h, f*w)
        x = crop_to(x, skip.shape[-2:])  # (B, skip, H', W')
        x = x * (self.gate(x) + self.skip_gate(skip))  # (B, skip, H', W')
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))  # (B, out, H', W')


@register_decoder("manet")
class MAnetDecoder(Decoder):
    """MA-Net (Fan et al. 2020): position attention on the deepest level, attention-gated U-Net fusion blocks.

    Args:
        in_spec: the encoder's pyramid (power-of-two strides, highest resolution first).
        decoder_channels: output channels of each block, deepest first: one per encoder level below the
            deepest, then one per remaining factor 2 down to stride 1 (5 for a resnet). Give fewer to stop
            early (the segmentation head up-samples the rest); default: smp's 256, 128, 64, 32, 16, as many
            as there are blocks.
        pab_channels: width of the position attention's queries and keys (smp's ``decoder_pab_channels``: 64).
        reduction: the fusion blocks' channel-gate reduction (smp: 16).
        norm: BatchNorm in every block (smp's ``decoder_use_norm``, default on).

    Shapes: ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, D_j, H / t_j, W / t_j)]``, one map per block,
    highest resolution (the last block) first; ``out_spec`` says which ``D_j`` and ``t_j``.
    """

    accepts = ("pyramid",)
    requires = "power-of-two strides"

    def __init__(self, in_spec: FeatureSpec, decoder_channels: list[int] | None = None,
                 pab_channels: Annotated[int, Field(ge=1, le=65536)] = 64,
                 reduction: Annotated[int, Field(ge=1, le=1024)] = 16, norm: bool = True) -> None:
        super().__init__(in_spec)
        strides, widths = in_spec.strides, in_spec.channels
        plan = skip_plan(in_spec, "manet")
        channels = plan_channels(plan, decoder_channels, in_spec, "manet")
        self.plan = plan[:len(channels)]
        self.center = PositionAttention(widths[-1], pab_channels)
        blocks: list[nn.Module] = []
        previous, out_strides, stride = widths[-1], [], strides[-1]
        for (level, factor), width in zip(self.plan, channels):
            if level is not None:
                blocks.append(FusionAttentionBlock(previous, widths[level], width, factor, reduction, norm))
            else:
                blocks.append(UnetBlock(previous, 0, width, factor, "nearest", norm))
            previous, stride = width, stride // factor
            out_strides.append(stride)
        self.blocks = nn.ModuleList(blocks)
        self.out_spec = FeatureSpec("pyramid", tuple(reversed(channels)), tuple(reversed(out_strides)),
                                    tuple(f"block{i}" for i in reversed(range(len(channels)))))

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int] | None = None,
                **context) -> list[torch.Tensor]:
        """``input_size`` (the model passes it) lets blocks without a skip crop to ``ceil(H / t)``."""
        skip_levels = [level for level, _ in self.plan]
        return run_blocks(self.blocks, skip_levels, self.out_spec.strides, self.center(features[-1]), features,
                          input_size)
