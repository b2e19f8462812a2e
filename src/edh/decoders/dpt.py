"""The DPT decoder (Ranftl et al. 2021, "Vision Transformers for Dense Prediction"), as smp 0.6.0's ``DPT``.

A plain ViT gives every level at one stride (16 for ``*_patch16_*``). DPT *reassembles* level ``i``
to stride ``4 * 2**i`` (1x1 conv to ``intermediate_channels[i]``, a transposed conv up or a strided
conv down, a 3x3 conv to ``fusion_channels``), then *fuses* them deepest first: two residual conv
units, each fusion adding the previous one's output, and a bilinear x2 up-sampling per fusion, so
the result is at stride 2.

What differs from smp:
- Readout: smp's ``DPT`` defaults to ``decoder_readout="cat"``, which concatenates each token with
  the ViT's class token and projects back. edh's ``timm:*`` encoder returns maps (timm's
  ``features_only``) without the prefix tokens, so this decoder is smp's ``decoder_readout="ignore"``:
  the same model but for the readout's ``Linear(2 D, D)`` per level.
- smp's ``DPTSegmentationHead`` starts with a 3x3 conv-BN-ReLU and dropout 0.1 before its 1x1 conv
  to classes; here that block ends the decoder (``head_conv``), so edh's ``segmentation`` head (a 1x1
  conv, up-sampling by 2) completes the same model.

Use it with a ViT whose features come from four blocks spread over its depth, as smp's default:
``{"name": "timm:vit_small_patch16_224", "out_indices": [2, 5, 8, 11]}`` (``options: {img_size: ...}``
or ``{dynamic_img_size: true}`` for other image sizes, plus ``dynamic_img_pad: true`` for sizes that are
not a multiple of the patch; the output is cropped to ``ceil(H / 2)``). A hierarchical pyramid (a ResNet, Swin) is
refused: use ``segformer``, ``upernet`` or ``fpn`` there.
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
from edh.layers.conv import ConvNormAct
from edh.ops.crop import crop_to

SMP_INTERMEDIATE = (256, 512, 1024, 1024)


class Reassemble(nn.Module):
    """A ViT level to an image-like map at another stride: 1x1 conv, resample by ``factor``, 3x3 conv.

    Args:
        in_channels: the ViT's width.
        mid_channels: channels after the 1x1 conv.
        out_channels: the fusion width.
        factor: > 1: a ``factor x factor`` transposed conv of stride ``factor`` (up); 1: nothing;
            < 1: a 3x3 conv of stride ``1 / factor`` (down).

    Shapes: ``(B, in_channels, h, w)`` -> ``(B, out_channels, h * factor, w * factor)`` (down: ceil).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, factor: float) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, mid_channels, 1)
        if factor > 1:
            self.resample = nn.ConvTranspose2d(mid_channels, mid_channels, int(factor), int(factor))
        elif factor == 1:
            self.resample = nn.Identity()
        else:
            self.resample = nn.Conv2d(mid_channels, mid_channels, 3, round(1 / factor), 1)
        self.out = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.resample(self.project(x)))


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: ReLU, 3x3 conv, BN, ReLU, 3x3 conv, BN, plus the input.

    Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3, act=False)
        self.conv2 = ConvNormAct(channels, channels, 3, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))  # not in place: x is the residual
        out = self.conv2(F.relu(out))
        return out + x


class FusionBlock(nn.Module):
    """Residual unit, plus the previous fusion's output, residual unit, bilinear resize, 1x1 conv.

    Shapes: ``(B, C, h, w)`` and previous ``(B, C, h, w)`` -> ``(B, C, H', W')``: ``size`` if given (the
    next level's), else ``(2 h, 2 w)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.unit1 = ResidualConvUnit(channels)
        self.unit2 = ResidualConvUnit(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None, size: Any = None) -> torch.Tensor:
        x = self.unit1(x)
        if previous is not None:
            x = x + previous
        x = self.unit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)  # (B, C, 2h, 2w)
        else:  # the next level's own size: 2x when it is a multiple, without a crop when it is not
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)  # (B, C, H', W')
        return self.project(x)


@register_decoder("dpt")
class DPTDecoder(Decoder):
    """DPT (Ranftl et al. 2021): reassembles and fuses a plain ViT's levels (timm:vit_*, four out_indices).

    Args:
        in_spec: the encoder's levels, all at one stride (a plain ViT); level ``i`` is reassembled to
            stride ``4 * 2**i``.
        intermediate_channels: channels of each level's reassembling, shallowest first (smp: 256,
            512, 1024, 1024 for four levels); one per encoder level.
        fusion_channels: channels of the fusion path and of the output (smp: 256).
        dropout: dropout after the closing 3x3 conv-BN-ReLU (smp's head: 0.1).

    Shapes: ``[(B, D, H / s, W / s)] * n`` -> ``[(B, fusion_channels, H / 2, W / 2)]``.
    """

    accepts = ("pyramid",)
    requires = "a plain ViT: every level at one stride (4 levels for the default intermediate_channels)"

    def __init__(self, in_spec: FeatureSpec, intermediate_channels: list[int] | None = None,
                 fusion_channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__(in_spec)
        strides, levels = in_spec.strides, in_spec.num_levels
        if len(set(strides)) != 1:
            raise SpecError(
                f"decoder dpt reads a plain ViT, every level at one stride; this encoder is a hierarchical "
                f"pyramid ({in_spec.describe()}): use a ViT (encoder timm:vit_small_patch16_224 with out_indices "
                "[2, 5, 8, 11]) or, for this encoder, decoder segformer, upernet or fpn"
            )
        if intermediate_channels is None:
            if levels != len(SMP_INTERMEDIATE):
                raise SpecError(
                    f"decoder dpt: the encoder gives {levels} levels, the default intermediate_channels "
                    f"{list(SMP_INTERMEDIATE)} are for 4: set encoder.out_indices to four blocks spread over the ViT "
                    f"(e.g. [2, 5, 8, 11] for 12 blocks, smp's choice) or give decoder.intermediate_channels {levels} "
                    "channel counts"
                )
            intermediate_channels = list(SMP_INTERMEDIATE)
        if len(intermediate_channels) != levels:
            raise ValueError(f"decoder.intermediate_channels has {len(intermediate_channels)} entries but the encoder "
                             f"gives {levels} levels ({in_spec.describe()}); give one per level")
        factors = [strides[0] / (4 * 2**i) for i in range(levels)]
        bad = [i for i, f in enumerate(factors) if not (f >= 1 and f.is_integer() or f < 1 and (1 / f).is_integer())]
        if bad:
            raise SpecError(f"decoder dpt reassembles level i to stride 4 * 2**i; stride {strides[0]} cannot be "
                            f"resampled to {[4 * 2**i for i in bad]} by an integer factor: use a ViT whose patch "
                            "size is a power of two (16, 8)")
        self.reassemble = nn.ModuleList(Reassemble(channels, mid, fusion_channels, factor)
                                        for channels, mid, factor in zip(in_spec.channels, intermediate_channels,
                                                                         factors))
        self.fusion = nn.ModuleList(FusionBlock(fusion_channels) for _ in range(levels))  # deepest first
        self.head_conv = ConvNormAct(fusion_channels, fusion_channels, 3)  # smp: DPTSegmentationHead.head[0:3]
        self.dropout = nn.Dropout(dropout)
        self.out_spec = FeatureSpec("pyramid", (fusion_channels,), (2,), ("fusion",))

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int] | None = None,
                **context: Any) -> list[torch.Tensor]:
        maps = [block(x) for block, x in zip(self.reassemble, features)]  # [(B, F, H / 4 / 2**i, W / 4 / 2**i)]
        fused = None
        for index in reversed(range(len(maps))):  # deepest first
            size = maps[index - 1].shape[-2:] if index else None
            fused = self.fusion[len(maps) - 1 - index](maps[index], fused, size)
        if input_size is not None:  # a ViT that pads the input to whole patches (dynamic_img_pad) overshoots
            fused = crop_to(fused, (-(-input_size[0] // 2), -(-input_size[1] // 2)))
        return [self.dropout(self.head_conv(fused))]  # [(B, F, H / 2, W / 2)]
