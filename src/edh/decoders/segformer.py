"""The SegFormer decoder (Xie et al. 2021): the all-MLP head, as smp 0.6.0's ``SegformerDecoder``.

Every encoder level goes through its own linear layer (a per-pixel MLP, here a 1x1 conv: the same
weights and arithmetic without reshaping to tokens) to ``segmentation_channels``, is resized
bilinearly to stride 4, and the concatenation (deepest level first, as smp) is fused by a 1x1
conv-BN-ReLU. It needs no particular strides, so it sits on any pyramid encoder: edh's resnets
(all five levels, as smp's Segformer on resnet34), ``timm:*`` CNNs, hierarchical transformers and
plain ViTs (every level at stride 16, each up-sampled to stride 4).

Any input size works: maps are resized to the encoder's stride-4 level's own size, or, when it
has none, to ``ceil(H / 4)`` of the ``input_size`` the model passes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.core.features import FeatureSpec
from edh.core.registry import register_decoder
from edh.decoders.base import Decoder
from edh.layers.conv import ConvNormAct

STRIDE = 4  # where the decoder fuses (smp: a quarter of the input; its head up-samples by 4)


@register_decoder("segformer")
class SegformerDecoder(Decoder):
    """SegFormer (Xie et al. 2021): the all-MLP decoder, fusing every encoder level at stride 4; any pyramid encoder.

    Args:
        in_spec: the encoder's pyramid (any strides; every level is read).
        segmentation_channels: width of each level's linear layer and of the output (smp: 256).

    Shapes: ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, segmentation_channels, H / 4, W / 4)]``.
    """

    accepts = ("pyramid",)

    def __init__(self, in_spec: FeatureSpec, segmentation_channels: int = 256) -> None:
        super().__init__(in_spec)
        if segmentation_channels < 1:
            raise ValueError(f"decoder.segmentation_channels must be positive (smp: 256), got {segmentation_channels}")
        self.linear = nn.ModuleList(nn.Conv2d(channels, segmentation_channels, 1) for channels in in_spec.channels)
        self.fuse = ConvNormAct(in_spec.num_levels * segmentation_channels, segmentation_channels, 1)
        at_four = [i for i, stride in enumerate(in_spec.strides) if stride == STRIDE]
        self.size_level = at_four[0] if at_four else None  # the level whose size is the target's
        self.out_spec = FeatureSpec("pyramid", (segmentation_channels,), (STRIDE,), ("fuse",))

    def target_size(self, features: list[torch.Tensor], input_size: tuple[int, int] | None) -> Any:
        """The stride-4 size: the stride-4 level's, else ``ceil(H / 4)`` of the input (else of level 0)."""
        if self.size_level is not None:
            return features[self.size_level].shape[-2:]
        if input_size is not None:
            return tuple(-(-int(side) // STRIDE) for side in input_size)
        stride = self.in_spec.strides[0]
        return tuple(-(-int(side) * stride // STRIDE) for side in features[0].shape[-2:])

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int] | None = None,
                **context: Any) -> list[torch.Tensor]:
        size = self.target_size(features, input_size)
        maps = [F.interpolate(linear(x), size=size, mode="bilinear", align_corners=False)  # (B, D, H / 4, W / 4)
                for linear, x in zip(self.linear, features)]
        return [self.fuse(torch.cat(maps[::-1], dim=1))]  # [(B, D, H / 4, W / 4)], deepest level first as smp
