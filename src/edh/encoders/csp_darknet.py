"""``csp_darknet``: the YOLOv8-style CSP-Darknet encoder.

Built from YOLOv8's public architecture description: a stride-2 3x3 conv stem, then four stages of
a stride-2 3x3 conv and a ``C2f`` block with residual bottlenecks; the last stage ends in ``SPPF``
(`edh.layers.csp`). The full-size design's widths are 64, 128, 256, 512, 1024 and its stages hold
3, 6, 6, 3 bottlenecks; a preset scales them (widths capped at ``max_channels``, scaled by
``width_multiple`` and rounded up to a multiple of 8; depths scaled by ``depth_multiple``):

| preset | depth_multiple | width_multiple | max_channels |
|---|---|---|---|
| n | 0.33 | 0.25 | 1024 |
| s | 0.33 | 0.50 | 1024 |
| m | 0.67 | 0.75 | 768 |
| l | 1.00 | 1.00 | 512 |
| x | 1.00 | 1.25 | 512 |

Output: a 5-level pyramid at strides 2, 4, 8, 16, 32 (``n``: 16, 32, 64, 128, 256 channels).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from edh.core.features import FeatureSpec
from edh.core.registry import register_encoder
from edh.encoders.base import Encoder
from edh.layers.csp import SPPF, C2f, ConvBNSiLU, scaled_depth, scaled_width
from edh.utils.weights import load_encoder_weights

# preset -> (depth_multiple, width_multiple, max_channels), YOLOv8's published scales
PRESETS: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024), "m": (0.67, 0.75, 768), "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}
WIDTHS = (64, 128, 256, 512, 1024)  # the full-size design: stem, then the four stages
REPEATS = (3, 6, 6, 3)  # bottlenecks per stage in the full-size design
LEVEL_NAMES = ("stem", "stage1", "stage2", "stage3", "stage4")

Multiple = Annotated[float, Field(gt=0, le=16)]


def preset_scales(preset: str, depth_multiple: float | None = None, width_multiple: float | None = None,
                  max_channels: int | None = None) -> tuple[float, float, int]:
    """``(depth_multiple, width_multiple, max_channels)`` of ``preset``, with the given overrides."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)} (YOLOv8's scales), got {preset!r}")
    depth, width, cap = PRESETS[preset]
    return (depth if depth_multiple is None else depth_multiple, width if width_multiple is None else width_multiple,
            cap if max_channels is None else max_channels)


@register_encoder("csp_darknet")
class CSPDarknetEncoder(Encoder):
    """YOLOv8's CSP-Darknet backbone (see the module docstring for the layers and presets).

    Args:
        preset: ``n``, ``s``, ``m``, ``l`` or ``x``: YOLOv8's depth / width / channel-cap scales.
        width_multiple, depth_multiple, max_channels: override the preset's.
        in_channels: image channels.
        weights: a local weight file (``.safetensors`` / ``.pth``) with this encoder's keys.

    Shapes:
        ``(B, in_channels, H, W)`` -> ``[(B, C_i, ceil(H / s_i), ceil(W / s_i))]`` for strides
        ``s_i`` = 2, 4, 8, 16, 32; ``out_spec.channels`` gives the ``C_i`` of the preset.
    """

    default_input_size = (640, 640)

    def __init__(self, preset: Literal["n", "s", "m", "l", "x"] = "n", width_multiple: Multiple | None = None,
                 depth_multiple: Multiple | None = None,
                 max_channels: Annotated[int, Field(ge=8, le=65536)] | None = None, in_channels: int = 3,
                 weights: str | None = None) -> None:
        super().__init__()
        depth, width, cap = preset_scales(preset, depth_multiple, width_multiple, max_channels)
        self.in_channels = in_channels
        channels = [scaled_width(c, width, cap) for c in WIDTHS]
        repeats = [scaled_depth(n, depth) for n in REPEATS]
        self.stem = ConvBNSiLU(in_channels, channels[0], 3, 2)
        for index in range(4):
            blocks = [ConvBNSiLU(channels[index], channels[index + 1], 3, 2),
                      C2f(channels[index + 1], channels[index + 1], repeats[index], shortcut=True)]
            if index == 3:
                blocks.append(SPPF(channels[4], channels[4], 5))
            setattr(self, LEVEL_NAMES[index + 1], nn.Sequential(*blocks))
        self.out_spec = FeatureSpec("pyramid", tuple(channels), (2, 4, 8, 16, 32), LEVEL_NAMES)
        if weights:
            load_encoder_weights(self, weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [self.stem(x)]  # (B, C_0, H/2, W/2)
        for name in LEVEL_NAMES[1:]:
            levels.append(getattr(self, name)(levels[-1]))  # (B, C_i, H/2^(i+1), W/2^(i+1))
        return levels
