"""``fpn``: a Feature Pyramid Network neck (Lin et al. 2017) on any pyramid encoder.

The layers are torchvision's ``FeaturePyramidNetwork`` (1x1 lateral convs, nearest-neighbour
top-down path, 3x3 output convs), so this decoder's ``fpn.*`` weights are torchvision's
``backbone.fpn.*`` weights key for key (see `edh.compat.torchvision_detection`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Literal

import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from edh.decoders.base import Decoder
from edh.core.features import FeatureSpec
from edh.core.registry import register_decoder


def default_levels(in_spec: FeatureSpec) -> list[int]:
    """Encoder levels an FPN reads by default: those of stride >= 4 (all, if fewer than two are)."""
    chosen = [i for i, s in enumerate(in_spec.strides) if s >= 4]
    return chosen if len(chosen) >= 2 else list(range(in_spec.num_levels))


@register_decoder("fpn")
class FPNDecoder(Decoder):
    """Feature Pyramid Network: every chosen encoder level becomes a map with ``out_channels`` channels.

    Args:
        out_channels: channels of every output level.
        levels: encoder levels to read, highest resolution first (default: every level of stride
            >= 4, e.g. ResNet's layer1..layer4; torchvision's Faster R-CNN uses these four).
        extra: levels added above the deepest one: ``maxpool`` (one level, stride x2, by
            subsampling: Faster R-CNN's ``pool``), ``p6p7`` (two 3x3 stride-2 convs: RetinaNet / FCOS)
            or ``none``.

    Shapes:
        ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, out_channels, H / s_j, W / s_j)]`` for the chosen
        levels then the extra ones, highest resolution first. Any input size works: the top-down
        path upsamples to each lateral map's own size.
    """

    accepts = ("pyramid",)

    def __init__(self, in_spec: FeatureSpec, out_channels: int = 256, levels: list[int] | None = None,
                 extra: Literal["maxpool", "p6p7", "none"] = "maxpool") -> None:
        super().__init__(in_spec)
        if out_channels < 1:
            raise ValueError(f"decoder fpn: out_channels must be positive, got {out_channels}")
        chosen = list(levels) if levels is not None else default_levels(in_spec)
        n = in_spec.num_levels
        bad = [i for i in chosen if not -n <= i < n]
        if bad or not chosen:
            raise ValueError(f"decoder fpn: levels {chosen} do not exist; the encoder has levels 0..{n - 1} "
                             f"({in_spec.describe()})")
        chosen = [i % n for i in chosen]
        if chosen != sorted(set(chosen)):
            raise ValueError(f"decoder fpn: levels must be distinct and highest resolution first, got {levels}")
        self.levels = chosen
        extra_blocks = {"maxpool": LastLevelMaxPool(), "p6p7": LastLevelP6P7(out_channels, out_channels),
                        "none": None}[extra]
        self.fpn = FeaturePyramidNetwork([in_spec.channels[i] for i in chosen], out_channels, extra_blocks)
        strides = [in_spec.strides[i] for i in chosen]
        strides += [strides[-1] * 2 ** k for k in range(1, {"maxpool": 1, "p6p7": 2, "none": 0}[extra] + 1)]
        names = tuple(f"p{int(round(math.log2(s)))}" for s in strides)
        self.out_spec = FeatureSpec("pyramid", (out_channels,) * len(strides), tuple(strides), names)

    def forward(self, features: list[torch.Tensor], **context: Any) -> list[torch.Tensor]:
        inputs = OrderedDict((str(k), features[i]) for k, i in enumerate(self.levels))
        return list(self.fpn(inputs).values())  # [(B, out_channels, H / s_j, W / s_j)]
