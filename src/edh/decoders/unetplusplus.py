"""``unetplusplus``: the UNet++ decoder (Zhou et al. 2018), as smp's ``UnetPlusPlus``.

UNet++ fills the gap between each encoder level and the decoder with nested, densely connected
conv blocks. Node ``X[i][j]`` sits at encoder level ``i`` (``X[i][0]`` is the encoder's map) and is
a `UnetBlock` over ``X[i + 1][j - 1]`` up-sampled, concatenated with every earlier node of its level::

    X[i][j] = block(up(X[i + 1][j - 1]), [X[i][j - 1], ..., X[i][1], X[i][0]])

The nodes with ``i + j`` = the deepest level form the decoder's main path; they have
``decoder_channels`` widths, every other node keeps its level's encoder width (as smp). Blocks without
a skip follow the main path down to stride 1, as in `edh.decoders.unet`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.core.registry import register_decoder
from edh.decoders.base import Decoder
from edh.decoders.unet import UnetBlock
from edh.ops.crop import crop_to


@register_decoder("unetplusplus")
class UnetPlusPlusDecoder(Decoder):
    """UNet++ (Zhou et al. 2018): nested dense skip paths between encoder and decoder; any pyramid encoder.

    Args:
        in_spec: the encoder's pyramid (power-of-two strides, highest resolution first).
        decoder_channels: widths of the main-path blocks, deepest first: one per encoder level below
            the deepest, then one per remaining factor 2 down to stride 1 (5 for a resnet). Give fewer
            to stop early (the segmentation head up-samples the rest); default: smp's 256, 128, 64, 32,
            16, as many as there are blocks.
        upsample: ``nearest`` (smp's ``decoder_interpolation`` default) or ``transpose`` (a learned
            transposed conv; see `UnetBlock`).
        norm: BatchNorm in every block (smp's ``decoder_use_norm``, default on).

    Shapes: ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, D_j, H / t_j, W / t_j)]``, one map per main-path
    block, highest resolution (the last block) first; ``out_spec`` says which ``D_j`` and ``t_j``.
    """

    accepts = ("pyramid",)
    requires = "power-of-two strides"

    def __init__(self, in_spec: FeatureSpec, decoder_channels: list[int] | None = None,
                 upsample: Literal["nearest", "transpose"] = "nearest", norm: bool = True) -> None:
        super().__init__(in_spec)
        strides, widths = in_spec.strides, in_spec.channels
        if any(s & (s - 1) for s in strides):
            raise SpecError(f"decoder unetplusplus needs power-of-two encoder strides, got {strides} "
                            f"({in_spec.describe()}); use a resnet, unet_encoder or timm encoder")
        n = len(strides)
        if n < 2:
            raise SpecError(f"decoder unetplusplus needs an encoder with at least two levels, got {in_spec.describe()}")
        extra, stride = 0, strides[0]
        while stride > 1:
            extra, stride = extra + 1, stride // 2
        blocks_total = n - 1 + extra
        defaults = [256, 128, 64, 32, 16, 16, 16][:blocks_total]
        channels = list(decoder_channels) if decoder_channels is not None else defaults
        if not 1 <= len(channels) <= blocks_total:
            raise SpecError(
                f"decoder.decoder_channels has {len(channels)} entries, but on this encoder ({in_spec.describe()}) "
                f"the unetplusplus decoder has {blocks_total} main-path blocks (one per level below the deepest, then "
                f"one per factor 2 down to stride 1); give 1 to {blocks_total} channel counts, deepest first"
            )
        skips = min(len(channels), n - 1)  # main-path blocks with a skip
        self.top = n - 1  # the deepest level
        nodes: dict[str, nn.Module] = {}  # smp's order: deep to shallow, per level the main-path node first
        for i in range(n - 2, n - 2 - skips, -1):
            for j in range(self.top - i, 0, -1):
                main = i + j == self.top
                below = (channels[j - 2] if j > 1 else widths[-1]) if main else widths[i + 1]
                width = channels[j - 1] if main else widths[i]
                nodes[f"x{i}_{j}"] = UnetBlock(below, j * widths[i], width, strides[i + 1] // strides[i],
                                               upsample, norm)
        # (level, column) of every node, column by column: X[i][j] reads column j - 1
        self.order = [(i, j) for j in range(1, self.top + 1) for i in range(self.top - j, self.top - skips - 1, -1)]
        self.skips = skips
        out_strides = [strides[self.top - j] for j in range(1, skips + 1)]
        self.tail_strides: list[int] = []  # the blocks without a skip, after the main path
        for k, width in enumerate(channels[skips:]):
            nodes[f"tail{k}"] = UnetBlock(channels[skips + k - 1], 0, width, 2, upsample, norm)
            self.tail_strides.append(out_strides[-1] // 2)
            out_strides.append(out_strides[-1] // 2)
        self.blocks = nn.ModuleDict(nodes)
        self.out_spec = FeatureSpec("pyramid", tuple(reversed(channels)), tuple(reversed(out_strides)),
                                    tuple(f"block{i}" for i in reversed(range(len(channels)))))

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int] | None = None,
                **context) -> list[torch.Tensor]:
        """``input_size`` (the model passes it) lets blocks without a skip crop to ``ceil(H / t)``."""
        grid: dict[tuple[int, int], torch.Tensor] = {(i, 0): f for i, f in enumerate(features)}  # X[i][0]
        for i, j in self.order:  # column by column: X[i][j] reads column j - 1
            earlier = [grid[(i, c)] for c in range(j - 1, -1, -1)]  # j maps (B, C_i, H_i, W_i), joined once
            grid[(i, j)] = self.blocks[f"x{i}_{j}"](grid[(i + 1, j - 1)], earlier)  # (B, D, H_i, W_i)
        main = [grid[(self.top - j, j)] for j in range(1, self.skips + 1)]  # the main path, deepest first
        x = main[-1]
        for k, stride in enumerate(self.tail_strides):
            x = self.blocks[f"tail{k}"](x)  # (B, D, 2h, 2w)
            if input_size is not None:
                x = crop_to(x, (-(-input_size[0] // stride), -(-input_size[1] // stride)))
            main.append(x)
        return main[::-1]  # highest resolution first
