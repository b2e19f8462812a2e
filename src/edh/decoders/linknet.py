"""``linknet``: the LinkNet decoder (Chaurasia & Culurciello 2017), as smp's ``Linknet``.

Each block shrinks its input's channels by 4 with a 1x1 conv, up-samples with a 4x4 stride-2
transposed conv, widens to the next level's channels with a 1x1 conv, and *adds* that level's
encoder map (U-Net concatenates). Blocks without a skip (below the encoder's first level) follow,
down to stride 1; the last one gives ``prefinal_channels``. Maps are aligned at the top-left corner:
a block's output is cropped to its skip's size (``ceil(H / s)``), so any input size works.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.core.registry import register_decoder
from edh.decoders.base import Decoder
from edh.decoders.unet import run_blocks
from edh.layers.conv import ConvNormAct
from edh.ops.crop import crop_to


def upsampler(channels: int, factor: int, norm: bool = True) -> nn.Sequential:
    """Learned up-sampling by ``factor`` then norm and ReLU: a ``2f x 2f`` stride-``f`` transposed conv
    (``f = 2``: kernel 4, padding 1), or a 3x3 conv where ``factor`` is 1 (two levels at one stride, as a
    dilated encoder gives). The conv has a bias only without BatchNorm, which would cancel it (smp keeps
    it: its gradient is zero in training; fold it into the running mean to load smp's weights).

    Shapes: ``(B, channels, h, w)`` -> ``(B, channels, factor * h, factor * w)``.
    """
    if factor == 1:
        conv: nn.Module = nn.Conv2d(channels, channels, 3, padding=1, bias=not norm)
    else:
        conv = nn.ConvTranspose2d(channels, channels, 2 * factor, factor, padding=factor // 2, bias=not norm)
    return nn.Sequential(conv, nn.BatchNorm2d(channels) if norm else nn.Identity(), nn.ReLU(inplace=True))


class LinknetBlock(nn.Module):
    """1x1 conv to ``in_channels / 4``, learned up-sampling by ``factor``, 1x1 conv to ``out_channels``,
    then the skip added (cropped to its size).

    Shapes: ``(B, in_channels, h, w)`` and skip ``(B, out_channels, H', W')`` -> ``(B, out_channels, H', W')``
    with ``H' <= factor * h`` (``factor * h`` without a skip).
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2, norm: bool = True) -> None:
        super().__init__()
        middle = max(1, in_channels // 4)
        self.reduce = ConvNormAct(in_channels, middle, 1, norm=norm)
        self.up = upsampler(middle, factor, norm)
        self.expand = ConvNormAct(middle, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.expand(self.up(self.reduce(x)))  # (B, out, f*h, f*w)
        if skip is not None:
            x = crop_to(x, skip.shape[-2:]) + skip  # (B, out, H', W')
        return x


@register_decoder("linknet")
class LinknetDecoder(Decoder):
    """LinkNet (Chaurasia & Culurciello 2017): up-sampling blocks that add encoder skips, down to stride 1.

    One block per encoder level below the deepest (up-sampling by the stride ratio: 2, or 1 between
    two levels at one stride, where a 3x3 conv stands in for the transposed conv), then one block per
    factor 2 down to stride 1 (resnets: 5 blocks, skips at strides 16, 8, 4, 2). Block widths are the
    skips' channels; the last block gives ``prefinal_channels`` (when the encoder's first level is at
    stride 1 there is no such block, and the output keeps that level's channels).

    Args:
        in_spec: the encoder's pyramid (power-of-two strides, each level at 1 or 2 times the
            previous level's stride).
        prefinal_channels: channels of the last block without a skip (smp: 32).
        norm: BatchNorm after every conv (smp's ``decoder_use_norm``, default on).

    Shapes: ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, D_j, H / t_j, W / t_j)]``, one map per block,
    highest resolution (the last block, stride 1) first.
    """

    accepts = ("pyramid",)
    requires = "power-of-two strides, each 1 or 2 times the previous one"

    def __init__(self, in_spec: FeatureSpec, prefinal_channels: Annotated[int, Field(ge=1, le=65536)] = 32,
                 norm: bool = True) -> None:
        super().__init__(in_spec)
        strides, channels = in_spec.strides, in_spec.channels
        ratios = [b // a for a, b in zip(strides, strides[1:])]
        if any(s & (s - 1) for s in strides) or any(r not in (1, 2) for r in ratios):
            raise SpecError(
                f"decoder linknet up-samples by 2 from level to level, but this encoder's strides are {strides} "
                f"({in_spec.describe()}); it needs power-of-two strides, each 1 or 2 times the previous one "
                "(a resnet, unet_encoder, a timm model, or one with encoder.output_stride 8 / 16)"
            )
        # (skip level or None, factor, width) per block, deepest first
        plan: list[tuple[int | None, int, int]] = [(i, ratios[i], channels[i]) for i in range(len(strides) - 2, -1, -1)]
        stride = strides[0]
        while stride > 1:
            plan.append((None, 2, channels[0]))
            stride //= 2
        if plan and plan[-1][0] is None:
            plan[-1] = (None, 2, prefinal_channels)
        blocks, previous, out_strides, stride = [], channels[-1], [], strides[-1]
        for level, factor, width in plan:
            blocks.append(LinknetBlock(previous, width, factor, norm))
            previous, stride = width, stride // factor
            out_strides.append(stride)
        self.blocks = nn.ModuleList(blocks)
        self.skip_levels = [level for level, _, _ in plan]
        widths = [width for _, _, width in plan]
        self.out_spec = FeatureSpec("pyramid", tuple(reversed(widths)), tuple(reversed(out_strides)),
                                    tuple(f"block{i}" for i in reversed(range(len(plan)))))

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int] | None = None,
                **context) -> list[torch.Tensor]:
        """``input_size`` (the model passes it) lets blocks without a skip crop to ``ceil(H / t)``."""
        return run_blocks(self.blocks, self.skip_levels, self.out_spec.strides, features[-1], features, input_size)
