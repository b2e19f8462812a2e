"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018) decoders, as smp 0.6.0 builds them.

Both read the deepest level of a *dilated* encoder (``encoder.output_stride: 8`` or ``16``; edh's
resnets and ``timm:*`` CNNs take that option) through ASPP (`edh.layers.aspp`). DeepLabV3 stops at
that level's stride (8 by default, where the ``segmentation`` head up-samples by 8); DeepLabV3+
up-samples the ASPP output to the encoder's stride-4 level and fuses it with that skip (the head
up-samples by 4). Neither contains smp's ``SegmentationHead``: that is edh's ``segmentation`` head.

Any input size works: ASPP keeps the map's size and DeepLabV3+ up-samples to the skip's own size
(bilinear, corners aligned, as smp), so nothing assumes a multiple of the output stride.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.core.registry import register_decoder
from edh.decoders.base import Decoder
from edh.layers.aspp import ASPP, SeparableConvNormAct
from edh.layers.conv import ConvNormAct

DILATED_STRIDES = (8, 16)


def check_dilated(in_spec: FeatureSpec, decoder: str, default_stride: int) -> None:
    """A `SpecError` unless the encoder's deepest level is at stride 8 or 16 (a dilated encoder)."""
    deepest = in_spec.strides[-1]
    if deepest not in DILATED_STRIDES:
        raise SpecError(
            f"decoder {decoder} needs an encoder whose deepest level is at stride 8 or 16 (dilated); this "
            f"encoder's is at stride {deepest} ({in_spec.describe()}): set encoder.output_stride: {default_stride} "
            f"(smp's default for {decoder}; edh's resnets and timm CNNs take it)"
        )


def check_rates(atrous_rates: list[int]) -> tuple[int, ...]:
    rates = tuple(int(rate) for rate in atrous_rates)
    if not rates or any(rate < 1 for rate in rates):
        raise ValueError(f"decoder.atrous_rates must be one or more positive dilations (smp: 12, 24, 36), "
                         f"got {list(atrous_rates)}")
    return rates


@register_decoder("deeplabv3")
class DeepLabV3Decoder(Decoder):
    """DeepLabV3 (Chen et al. 2017): ASPP on a dilated encoder (encoder.output_stride 8 or 16).

    ASPP, then a 3x3 conv-BN-ReLU, at the encoder's deepest stride (smp's ``DeepLabV3Decoder``).

    Args:
        in_spec: the encoder's pyramid; its deepest level must be at stride 8 (smp's default,
            ``encoder.output_stride: 8``) or 16.
        decoder_channels: channels of ASPP and of the output (smp: 256).
        atrous_rates: dilations of ASPP's 3x3 branches (smp: 12, 24, 36).
        aspp_separable: depthwise-separable ASPP branches (smp: False).
        aspp_dropout: dropout after ASPP's fusing conv (smp: 0.5).

    Shapes: ``[..., (B, C, H / s, W / s)]`` -> ``[(B, decoder_channels, H / s, W / s)]``, s = 8 or 16.
    """

    accepts = ("pyramid",)
    requires = "deepest level at stride 8 or 16 (encoder.output_stride: 8)"

    def __init__(self, in_spec: FeatureSpec, decoder_channels: int = 256, atrous_rates: list[int] = (12, 24, 36),
                 aspp_separable: bool = False, aspp_dropout: float = 0.5) -> None:
        super().__init__(in_spec)
        check_dilated(in_spec, "deeplabv3", 8)
        rates = check_rates(atrous_rates)
        self.aspp = ASPP(in_spec.channels[-1], decoder_channels, rates, aspp_separable, aspp_dropout)
        self.conv = ConvNormAct(decoder_channels, decoder_channels, 3)
        self.out_spec = FeatureSpec("pyramid", (decoder_channels,), (in_spec.strides[-1],), ("aspp",))

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int] | None = None,
                **context: Any) -> list[torch.Tensor]:
        return [self.conv(self.aspp(features[-1]))]  # [(B, D, H / s, W / s)]


@register_decoder("deeplabv3plus")
class DeepLabV3PlusDecoder(Decoder):
    """DeepLabV3+ (Chen et al. 2018): separable ASPP on a dilated encoder (output_stride 16 or 8) + stride-4 skip.

    ASPP and a separable 3x3 conv on the deepest level, bilinear up-sampling to the stride-4 level,
    concatenated with that level reduced to ``skip_channels`` by a 1x1 conv, then a separable 3x3
    conv (smp's ``DeepLabV3PlusDecoder``).

    Args:
        in_spec: the encoder's pyramid; its deepest level must be at stride 16 (smp's default,
            ``encoder.output_stride: 16``) or 8, and one level at stride 4 (the deepest such is used).
        decoder_channels: channels of ASPP and of the output (smp: 256).
        atrous_rates: dilations of ASPP's 3x3 branches (smp: 12, 24, 36).
        aspp_separable: depthwise-separable ASPP branches (smp: True).
        aspp_dropout: dropout after ASPP's fusing conv (smp: 0.5).
        skip_channels: channels the stride-4 skip is reduced to (smp, and the paper: 48).

    Shapes: ``[..., (B, C_4, H / 4, W / 4), ..., (B, C, H / s, W / s)]`` -> ``[(B, decoder_channels, H / 4, W / 4)]``.
    """

    accepts = ("pyramid",)
    requires = "deepest level at stride 16 or 8 (encoder.output_stride: 16) and a level at stride 4"

    def __init__(self, in_spec: FeatureSpec, decoder_channels: int = 256, atrous_rates: list[int] = (12, 24, 36),
                 aspp_separable: bool = True, aspp_dropout: float = 0.5, skip_channels: int = 48) -> None:
        super().__init__(in_spec)
        check_dilated(in_spec, "deeplabv3plus", 16)
        at_four = [i for i, stride in enumerate(in_spec.strides) if stride == 4]
        if not at_four:
            raise SpecError(
                f"decoder deeplabv3plus fuses the encoder's level at stride 4, but this encoder has none "
                f"({in_spec.describe()}): pick an encoder with a stride-4 level (edh's resnets, most timm CNNs) "
                "or use decoder deeplabv3"
            )
        if skip_channels < 1:
            raise ValueError(f"decoder.skip_channels must be positive (smp: 48), got {skip_channels}")
        rates = check_rates(atrous_rates)
        self.skip_level = at_four[-1]
        self.aspp = nn.Sequential(ASPP(in_spec.channels[-1], decoder_channels, rates, aspp_separable, aspp_dropout),
                                  SeparableConvNormAct(decoder_channels, decoder_channels, 3))
        self.skip = ConvNormAct(in_spec.channels[self.skip_level], skip_channels, 1)
        self.fuse = SeparableConvNormAct(decoder_channels + skip_channels, decoder_channels, 3)
        self.out_spec = FeatureSpec("pyramid", (decoder_channels,), (4,), ("fuse",))

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int] | None = None,
                **context: Any) -> list[torch.Tensor]:
        skip = self.skip(features[self.skip_level])  # (B, skip_channels, H / 4, W / 4)
        x = self.aspp(features[-1])  # (B, D, H / s, W / s)
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)  # (B, D, H / 4, W / 4)
        return [self.fuse(torch.cat([x, skip], dim=1))]  # [(B, D, H / 4, W / 4)]
