"""``pan``: the Pyramid Attention Network decoder (Li et al. 2018), as smp's ``PAN``.

Feature Pyramid Attention (`edh.layers.attention2d.FeaturePyramidAttention`) on the deepest encoder
level, then one Global Attention Upsample (`GlobalAttentionUpsample`) per shallower level of stride
>= 4, deep to shallow. smp builds PAN on a dilated encoder (``encoder_output_stride=16``); the same
model in edh is ``encoder.output_stride: 16``, though any pyramid encoder works. The segmentation
head up-samples by the shallowest level's stride (4 on a resnet). smp's convs keep a bias before each
BatchNorm, which cancels it: edh leaves those 262 parameters (resnet34, 32 channels) out.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.core.registry import register_decoder
from edh.decoders.base import Decoder
from edh.layers.attention2d import FeaturePyramidAttention, GlobalAttentionUpsample


@register_decoder("pan")
class PANDecoder(Decoder):
    """PAN (Li et al. 2018): pyramid attention + global attention upsampling (smp: encoder.output_stride 16).

    Args:
        in_spec: the encoder's pyramid; the levels at stride 4 or more are read (at least two).
        decoder_channels: channels of every block and of the output (smp: 32).
        upsample: how each Global Attention Upsample enlarges the map above it: ``bilinear`` (aligned
            corners; smp's ``decoder_interpolation`` default) or ``nearest``.

    Shapes: ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, decoder_channels, H / s, W / s)]``, ``s`` the
    stride of the shallowest level read. Training needs a batch of two or more (BatchNorm after global
    pooling, as smp).
    """

    accepts = ("pyramid",)
    requires = "two levels at stride >= 4 (smp: encoder.output_stride: 16)"

    def __init__(self, in_spec: FeatureSpec, decoder_channels: Annotated[int, Field(ge=1, le=65536)] = 32,
                 upsample: Literal["bilinear", "nearest"] = "bilinear") -> None:
        super().__init__(in_spec)
        if upsample not in ("bilinear", "nearest"):
            raise SpecError(f"decoder.upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        self.levels = [i for i, s in enumerate(in_spec.strides) if s >= 4]
        if len(self.levels) < 2:
            raise SpecError(f"decoder pan needs an encoder with at least two levels at stride 4 or more, got "
                            f"{in_spec.describe()}; use a deeper encoder")
        deepest, *shallower = self.levels[::-1]
        self.fpa = FeaturePyramidAttention(in_spec.channels[deepest], decoder_channels)
        self.gaus = nn.ModuleList(GlobalAttentionUpsample(in_spec.channels[i], decoder_channels, upsample)
                                  for i in shallower)  # deep to shallow
        level = self.levels[0]
        names = (in_spec.names[level],) if in_spec.names else ()
        self.out_spec = FeatureSpec("pyramid", (decoder_channels,), (in_spec.strides[level],), names)

    def forward(self, features: list[torch.Tensor], **context) -> list[torch.Tensor]:
        x = self.fpa(features[self.levels[-1]])  # (B, D, H / s_max, W / s_max)
        for gau, level in zip(self.gaus, reversed(self.levels[:-1])):
            x = gau(features[level], x)  # (B, D, H / s_i, W / s_i)
        return [x]
