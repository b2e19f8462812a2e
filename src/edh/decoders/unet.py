"""The U-Net decoder (Ronneberger et al. 2015): up-sample, concatenate the encoder's skip, two 3x3 convs.

Works on any pyramid encoder (edh's resnets, ``timm:*``, ``unet_encoder``): one block per encoder
level below the deepest, each taking that level as its skip connection, then blocks without a
skip until stride 1 (a resnet's stem is at stride 2, so its last block has no skip, as in smp).

Any input size works. Encoders give level ``i`` a size of ``ceil(H / s_i)``; each block up-samples
by the integer stride ratio and, where that overshoots the skip by a pixel, crops the bottom /
right edge, so every map stays aligned to the input's top-left corner exactly as if the input had
been padded to a multiple of the total stride and the result cropped back. Blocks without a skip
crop to ``ceil(H / t)`` with the ``input_size`` the model passes; the segmentation head crops its
output to the input size the same way.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from edh.core.errors import SpecError
from edh.decoders.base import Decoder
from edh.core.features import FeatureSpec
from edh.layers.conv import ConvNormAct
from edh.core.registry import register_decoder
from edh.ops.crop import crop_to



class UnetBlock(nn.Module):
    """Up-sample by ``factor``, concatenate the skip (if any), then two conv-norm-ReLU blocks.

    Args:
        in_channels: channels of the map from the block below.
        skip_channels: channels of the skip connection (0: none).
        out_channels: channels this block produces.
        factor: integer up-sampling factor (the stride ratio between the two levels).
        upsample: ``nearest`` (interpolation, as in smp) or ``transpose`` (a learned
            ``factor x factor`` transposed convolution to ``out_channels``, as in the paper).
        norm: BatchNorm after each conv (the paper has none).

    Shapes: ``(B, in_channels, h, w)`` and skip ``(B, skip_channels, H', W')`` ->
    ``(B, out_channels, H', W')`` with ``H' <= factor * h`` (``factor * h`` without a skip).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, factor: int = 2,
                 upsample: str = "nearest", norm: bool = True) -> None:
        super().__init__()
        self.factor = factor
        self.up = None
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, factor, factor)
            in_channels = out_channels
        self.conv1 = ConvNormAct(in_channels + skip_channels, out_channels, 3, norm=norm)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | list[torch.Tensor] | None = None) -> torch.Tensor:
        """``skip``: one map, or several of one size concatenated in order (UNet++'s dense skips: one
        ``torch.cat`` in all, not one to join them and another to join them to ``x``)."""
        if self.up is not None:
            x = self.up(x)  # (B, out, f*h, f*w)
        elif self.factor > 1:
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")  # (B, in, f*h, f*w)
        if skip is not None:
            skips = [skip] if isinstance(skip, torch.Tensor) else list(skip)
            x = torch.cat([crop_to(x, skips[0].shape[-2:]), *skips], dim=1)  # (B, in + skip, H', W')
        return self.conv2(self.conv1(x))


def skip_plan(in_spec: FeatureSpec, decoder: str) -> list[tuple[int | None, int]]:
    """``(skip level or None, up-sampling factor)`` per block, deepest first: one block per encoder level
    below the deepest (that level is its skip), then blocks without a skip, by 2, down to stride 1.
    The strides must be powers of two (a `SpecError` naming ``decoder`` otherwise)."""
    strides = in_spec.strides
    if any(s & (s - 1) for s in strides):
        raise SpecError(f"decoder {decoder} needs power-of-two encoder strides, got {strides} ({in_spec.describe()}); "
                        "use a resnet, unet_encoder or timm encoder")
    plan: list[tuple[int | None, int]] = [(i, strides[i + 1] // strides[i]) for i in range(len(strides) - 2, -1, -1)]
    stride = strides[0]
    while stride > 1:
        plan.append((None, 2))
        stride //= 2
    return plan


def plan_channels(plan: list, decoder_channels: list[int] | None, in_spec: FeatureSpec, decoder: str) -> list[int]:
    """The blocks' widths, deepest first: ``decoder_channels`` (1 to ``len(plan)`` of them: fewer stop
    early) or smp's 256, 128, 64, 32, 16 (then 16), as many as there are blocks."""
    channels = list(decoder_channels) if decoder_channels is not None else [256, 128, 64, 32, 16, 16, 16][:len(plan)]
    if not 1 <= len(channels) <= len(plan):
        raise SpecError(
            f"decoder.decoder_channels has {len(channels)} entries, but on this encoder ({in_spec.describe()}) "
            f"the {decoder} decoder has {len(plan)} blocks (one per skip level, then one per factor 2 down to "
            f"stride 1); give 1 to {len(plan)} channel counts, deepest first"
        )
    return channels


def run_blocks(blocks: nn.ModuleList, skip_levels: list[int | None], strides: tuple[int, ...], x: torch.Tensor,
               features: list[torch.Tensor], input_size: tuple[int, int] | None) -> list[torch.Tensor]:
    """The up-sampling path shared by skip decoders (``unet``, ``manet``, ``linknet``): each block takes
    the map below and its skip level (None: no skip); a block without a skip is cropped to
    ``ceil(H / t)`` of ``input_size``. ``strides``: the out_spec's, highest resolution first.
    Returns every block's map, highest resolution first."""
    outputs = []
    for block, level, stride in zip(blocks, skip_levels, reversed(strides)):
        x = block(x, features[level] if level is not None else None)  # (B, D, H / t, W / t)
        if level is None and input_size is not None:
            x = crop_to(x, (-(-input_size[0] // stride), -(-input_size[1] // stride)))
        outputs.append(x)
    return outputs[::-1]  # highest resolution first


@register_decoder("unet")
class UnetDecoder(Decoder):
    """U-Net decoder over any pyramid encoder.

    Args:
        in_spec: the encoder's pyramid (strides must be powers of two, highest resolution first).
        decoder_channels: output channels of each block, deepest first. There is one block per
            encoder level below the deepest, then one per remaining factor 2 down to stride 1
            (5 for a resnet: skips at strides 16, 8, 4, 2, then stride 1). Give fewer to stop
            early (the segmentation head up-samples the rest); default: 256, 128, 64, 32, 16
            (smp's), as many as there are blocks.
        upsample: ``nearest`` or ``transpose`` (see `UnetBlock`).
        norm: BatchNorm in every block.

    Shapes: ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, D_j, H / t_j, W / t_j)]``, one map per block,
    highest resolution (the last block) first; ``out_spec`` says which ``D_j`` and ``t_j``.
    """

    accepts = ("pyramid",)

    def __init__(self, in_spec: FeatureSpec, decoder_channels: list[int] | None = None,
                 upsample: Literal["nearest", "transpose"] = "nearest", norm: bool = True) -> None:
        super().__init__(in_spec)
        if upsample not in ("nearest", "transpose"):
            raise ValueError(f"decoder.upsample must be 'nearest' or 'transpose', got {upsample!r}")
        strides = in_spec.strides
        plan = skip_plan(in_spec, "unet")
        channels = plan_channels(plan, decoder_channels, in_spec, "unet")
        self.plan = plan[:len(channels)]
        blocks, previous, out_strides, stride = [], in_spec.channels[-1], [], strides[-1]
        for (level, factor), width in zip(self.plan, channels):
            skip = in_spec.channels[level] if level is not None else 0
            blocks.append(UnetBlock(previous, skip, width, factor, upsample, norm))
            previous, stride = width, stride // factor
            out_strides.append(stride)
        self.blocks = nn.ModuleList(blocks)
        self.skip_levels = [level for level, _ in self.plan]
        self.out_spec = FeatureSpec("pyramid", tuple(reversed(channels)), tuple(reversed(out_strides)),
                                    tuple(f"block{i}" for i in reversed(range(len(channels)))))

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int] | None = None,
                **context) -> list[torch.Tensor]:
        """``input_size`` (the model passes it) lets blocks without a skip crop to ``ceil(H / t)``."""
        return run_blocks(self.blocks, self.skip_levels, self.out_spec.strides, features[-1], features, input_size)
