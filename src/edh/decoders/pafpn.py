"""``pafpn``: the YOLOv8 neck, a path-aggregation FPN (Liu et al. 2018, "PANet") of ``C2f`` blocks.

Built from YOLOv8's public architecture description, over the levels it reads (default: those of
stride 8, 16, 32) of any pyramid encoder (``csp_darknet``, ``resnet18``, ``timm:...``):

- top-down: from the deepest level up, the map so far is upsampled (nearest) to the next level's
  size, concatenated with that level and fused by a ``C2f`` (no residual bottlenecks);
- bottom-up: from the highest resolution down, a stride-2 3x3 conv, concatenated with the top-down
  map of the next level (the deepest level's own input there), fused by a ``C2f``.

Each level read has twice the stride of the one before (or the same: a dilated encoder's deepest
levels, where the bottom-up conv keeps stride 1).

Not to be confused with ``pan``, the Pyramid Attention Network decoder for segmentation.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edh.core.features import FeatureSpec
from edh.core.registry import register_decoder
from edh.decoders.base import Decoder
from edh.layers.csp import C2f, ConvBNSiLU, scaled_depth

DEPTH_MULTIPLES = {"n": 0.33, "s": 0.33, "m": 0.67, "l": 1.0, "x": 1.0}  # YOLOv8's scales
REPEATS = 3  # bottlenecks per C2f in the full-size design


def default_levels(in_spec: FeatureSpec) -> list[int]:
    """The levels of stride 8, 16 and 32 when the encoder has them all, else its three deepest."""
    if all(s in in_spec.strides for s in (8, 16, 32)):
        return [in_spec.strides.index(s) for s in (8, 16, 32)]
    return list(range(max(0, in_spec.num_levels - 3), in_spec.num_levels))


@register_decoder("pafpn")
class PAFPNDecoder(Decoder):
    """YOLOv8's PAN neck over the chosen encoder levels (see the module docstring).

    Args:
        levels: encoder levels to read, highest resolution first (at least two; default: strides
            8, 16, 32, else the three deepest).
        channels: output channels per level (default: the input levels' own, as YOLOv8's neck).
        preset: ``n``, ``s``, ``m``, ``l`` or ``x``: YOLOv8's depth scale for the bottlenecks per
            ``C2f`` (3 in the full-size design: ``n`` / ``s`` 1, ``m`` 2, ``l`` / ``x`` 3).
        depth_multiple: overrides the preset's depth scale.

    Shapes:
        ``[(B, C_i, H / s_i, W / s_i)]`` -> ``[(B, channels_j, H / s_j, W / s_j)]`` for the chosen
        levels ``j``, highest resolution first. Any input size works: upsampling goes to each
        lateral map's own size.
    """

    accepts = ("pyramid",)

    def __init__(self, in_spec: FeatureSpec, levels: list[int] | None = None,
                 channels: list[Annotated[int, Field(ge=1, le=65536)]] | None = None,
                 preset: Literal["n", "s", "m", "l", "x"] = "n",
                 depth_multiple: Annotated[float, Field(gt=0, le=16)] | None = None) -> None:
        super().__init__(in_spec)
        n = in_spec.num_levels
        chosen = list(levels) if levels is not None else default_levels(in_spec)
        if len(chosen) < 2 or any(not -n <= i < n for i in chosen):
            raise ValueError(f"decoder pafpn: levels {chosen} must name at least two levels of the encoder, which "
                             f"has levels 0..{n - 1} ({in_spec.describe()})")
        chosen = [i % n for i in chosen]
        if chosen != sorted(set(chosen)):
            raise ValueError(f"decoder pafpn: levels must be distinct and highest resolution first, got {levels}")
        strides = tuple(in_spec.strides[i] for i in chosen)
        steps = [b // a if b % a == 0 else 0 for a, b in zip(strides, strides[1:])]
        if any(step not in (1, 2) for step in steps):
            raise ValueError(f"decoder pafpn: each level it reads must have the stride of the one before or twice "
                             f"it (the neck's steps are 2x), got levels {chosen} of strides {strides}; pick "
                             f"neighbouring levels of the encoder ({in_spec.describe()})")
        inputs = [in_spec.channels[i] for i in chosen]
        out = list(channels) if channels is not None else inputs
        if len(out) != len(chosen):
            raise ValueError(f"decoder pafpn: channels gives {len(out)} widths but it reads {len(chosen)} levels "
                             f"({chosen}); give one per level")
        repeats = scaled_depth(REPEATS, DEPTH_MULTIPLES[preset] if depth_multiple is None else depth_multiple)
        self.levels = chosen
        last = len(chosen) - 1
        top = [0] * last + [inputs[last]]  # channels of each level's top-down map (the deepest: its input)
        self.top_down = nn.ModuleList([nn.Identity()] * last)
        for i in reversed(range(last)):
            self.top_down[i] = C2f(top[i + 1] + inputs[i], out[i], repeats, shortcut=False)
            top[i] = out[i]
        self.downsample = nn.ModuleList([ConvBNSiLU(out[i], out[i], 3, steps[i]) for i in range(last)])
        self.bottom_up = nn.ModuleList([C2f(out[i] + top[i + 1], out[i + 1], repeats, shortcut=False)
                                        for i in range(last)])
        names = tuple(f"p{int(round(math.log2(s)))}" for s in strides)
        self.out_spec = FeatureSpec("pyramid", tuple(out), strides, names)

    def forward(self, features: list[torch.Tensor], **context: Any) -> list[torch.Tensor]:
        inputs = [features[i] for i in self.levels]
        top = [None] * (len(inputs) - 1) + [inputs[-1]]
        for i in reversed(range(len(inputs) - 1)):
            up = F.interpolate(top[i + 1], size=inputs[i].shape[-2:], mode="nearest")
            top[i] = self.top_down[i](torch.cat([up, inputs[i]], dim=1))  # (B, channels_i, H / s_i, W / s_i)
        outputs = [top[0]]
        for i, (down, fuse) in enumerate(zip(self.downsample, self.bottom_up)):
            outputs.append(fuse(torch.cat([down(outputs[-1]), top[i + 1]], dim=1)))
        return outputs
