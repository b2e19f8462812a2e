"""``pspnet``: the PSPNet decoder (Zhao et al. 2017), as smp's ``PSPNet``.

Pyramid pooling (`edh.layers.pyramid_pooling.PyramidPooling`, grids 1, 2, 3, 6, each branch a quarter
of the map's channels) on one encoder level, then a 1x1 conv-norm-ReLU and 2-D dropout. smp reads the
level at stride 8 by default (``encoder_depth=3``: resnet34's ``layer2``, 128 channels) and leaves the
deeper stages out; the paper reads a dilated ResNet's last stage at stride 8, which ``stride: 8`` on an
encoder with ``output_stride: 8`` gives. The segmentation head up-samples by that stride.
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
from edh.layers.conv import ConvNormAct
from edh.layers.pyramid_pooling import PyramidPooling


@register_decoder("pspnet")
class PSPNetDecoder(Decoder):
    """PSPNet (Zhao et al. 2017): pyramid pooling on the encoder level at ``stride`` (default 8, as smp).

    Args:
        in_spec: the encoder's pyramid; it needs a level at ``stride`` (the deepest such level is read:
            on a dilated encoder, ``output_stride: 8``, that is the last stage).
        stride: the stride of the encoder level to read (smp's ``encoder_depth`` 3, 4, 5 is 8, 16, 32).
        out_channels: channels after pyramid pooling (smp's ``psp_out_channels``: 512).
        pool_sizes: the pooling grids (smp: 1, 2, 3, 6); each branch has ``C / len(pool_sizes)`` channels.
        dropout: 2-D dropout after the last conv (smp's ``psp_dropout``: 0.2).
        norm: BatchNorm in the convs (smp's ``decoder_use_norm``; never on the 1x1 grid, whose
            BatchNorm would see one value per channel and image).

    Shapes: ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, out_channels, H / stride, W / stride)]``.
    """

    accepts = ("pyramid",)
    requires = "a level at decoder.stride (default 8)"

    def __init__(self, in_spec: FeatureSpec, stride: Annotated[int, Field(ge=1, le=1024)] = 8,
                 out_channels: Annotated[int, Field(ge=1, le=65536)] = 512,
                 pool_sizes: list[Annotated[int, Field(ge=1, le=64)]] | None = None,
                 dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2, norm: bool = True) -> None:
        super().__init__(in_spec)
        at_stride = [i for i, s in enumerate(in_spec.strides) if s == stride]
        if not at_stride:
            raise SpecError(
                f"decoder.stride is {stride}, but the encoder has no level at that stride ({in_spec.describe()}); "
                f"pick one of its strides {sorted(set(in_spec.strides))} (smp's PSPNet reads stride 8)"
            )
        sizes = tuple(pool_sizes) if pool_sizes is not None else (1, 2, 3, 6)
        if not sizes:
            raise SpecError("decoder.pool_sizes is empty; give the pooling grids, e.g. [1, 2, 3, 6]")
        self.level = at_stride[-1]
        channels = in_spec.channels[self.level]
        if channels < len(sizes):
            raise SpecError(f"decoder pspnet: the encoder level at stride {stride} has {channels} channels, fewer "
                            f"than the {len(sizes)} pooling branches that share them; give fewer decoder.pool_sizes")
        self.pool = PyramidPooling(channels, channels // len(sizes), sizes, norm=norm, norm_global=False,
                                   align_corners=True, map_first=False)
        self.conv = ConvNormAct(self.pool.out_channels, out_channels, 1, norm=norm)
        self.dropout = nn.Dropout2d(dropout)
        names = (in_spec.names[self.level],) if in_spec.names else ()
        self.out_spec = FeatureSpec("pyramid", (out_channels,), (stride,), names)

    def forward(self, features: list[torch.Tensor], **context) -> list[torch.Tensor]:
        x = self.pool(features[self.level])  # (B, 2C, H / stride, W / stride)
        return [self.dropout(self.conv(x))]  # [(B, out_channels, H / stride, W / stride)]
