"""``upernet``: the UPerNet decoder (Xiao et al. 2018), as smp's ``UPerNet``.

The encoder levels at stride >= 4 are each layer-normalised over channels. The deepest goes through
pyramid pooling (`edh.layers.pyramid_pooling.PyramidPooling`, grids 1, 2, 3, 6) and a 3x3 conv; an
FPN top-down path adds each shallower level's 1x1 lateral to the bilinearly up-sampled map above
it, then a 3x3 conv smooths each sum. All maps, resized to the shallowest one, are concatenated and
fused by a 3x3 conv. The segmentation head up-samples by that level's stride (4 on a resnet).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torchvision.models.convnext import LayerNorm2d

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.core.registry import register_decoder
from edh.decoders.base import Decoder
from edh.layers.conv import ConvNormAct
from edh.layers.pyramid_pooling import PyramidPooling


@register_decoder("upernet")
class UPerNetDecoder(Decoder):
    """UPerNet (Xiao et al. 2018): pyramid pooling + FPN fused at stride 4; any encoder with two levels at stride >= 4.

    Args:
        in_spec: the encoder's pyramid; the levels at stride 4 or more are read (a resnet's ``layer1`` to
            ``layer4``; dilated encoders' equal strides are fine).
        decoder_channels: channels of every branch, lateral and of the output (smp: 256).
        pool_sizes: the pooling grids on the deepest level (smp: 1, 2, 3, 6).
        norm: BatchNorm in the convs (smp's ``decoder_use_norm``, default on; the 1x1 grid's branch
            has one too, as smp, so training needs a batch of two or more).

    Shapes: ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, decoder_channels, H / s, W / s)]``, ``s`` the
    stride of the shallowest level read.
    """

    accepts = ("pyramid",)
    requires = "two levels at stride >= 4"

    def __init__(self, in_spec: FeatureSpec, decoder_channels: Annotated[int, Field(ge=1, le=65536)] = 256,
                 pool_sizes: list[Annotated[int, Field(ge=1, le=64)]] | None = None, norm: bool = True) -> None:
        super().__init__(in_spec)
        self.levels = [i for i, s in enumerate(in_spec.strides) if s >= 4]
        if len(self.levels) < 2:
            raise SpecError(f"decoder upernet needs an encoder with at least two levels at stride 4 or more (an FPN "
                            f"over them), got {in_spec.describe()}; use a deeper encoder")
        sizes = tuple(pool_sizes) if pool_sizes is not None else (1, 2, 3, 6)
        if not sizes:
            raise SpecError("decoder.pool_sizes is empty; give the pooling grids, e.g. [1, 2, 3, 6]")
        channels = [in_spec.channels[i] for i in self.levels]
        width = decoder_channels
        self.norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in channels)
        self.pool = PyramidPooling(channels[-1], width, sizes, norm=norm, norm_global=True, align_corners=False,
                                   map_first=True)
        self.pool_conv = ConvNormAct(self.pool.out_channels, width, 3, norm=norm)
        self.laterals = nn.ModuleList(ConvNormAct(c, width, 1, norm=norm) for c in reversed(channels[:-1]))
        self.smooth = nn.ModuleList(ConvNormAct(width, width, 3, norm=norm) for _ in channels[:-1])
        self.fuse = ConvNormAct(len(channels) * width, width, 3, norm=norm)
        level = self.levels[0]
        names = (in_spec.names[level],) if in_spec.names else ()
        self.out_spec = FeatureSpec("pyramid", (width,), (in_spec.strides[level],), names)

    def forward(self, features: list[torch.Tensor], **context) -> list[torch.Tensor]:
        maps = [norm(features[i]) for norm, i in zip(self.norms, self.levels)]  # [(B, C_i, H_i, W_i)]
        top = self.pool_conv(self.pool(maps[-1]))  # (B, D, H_deepest, W_deepest)
        pyramid = [top]  # deepest first
        for lateral, smooth, x in zip(self.laterals, self.smooth, reversed(maps[:-1])):
            x = lateral(x)  # (B, D, H_i, W_i)
            top = x + F.interpolate(top, size=x.shape[-2:], mode="bilinear", align_corners=False)
            pyramid.append(smooth(top))  # (B, D, H_i, W_i)
        size = pyramid[-1].shape[-2:]
        resized = [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in reversed(pyramid)]
        return [self.fuse(torch.cat(resized, dim=1))]  # [(B, D, H_0, W_0)]
