"""ResNet encoders (He et al. 2016) whose state dict matches torchvision's ``resnet*`` (minus ``fc``).

Output: a 5-level pyramid, strides 2 (stem), 4, 8, 16, 32, highest resolution first. With
``output_stride`` 16 or 8 the deepest stages trade their stride for dilation (atrous convolution,
Chen et al. 2017, as torchvision's ``replace_stride_with_dilation``): strides (2, 4, 8, 16, 16) or
(2, 4, 8, 8, 8), the same parameter shapes, so torchvision and timm weights still load.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from edh.encoders.base import Encoder
from edh.core.features import FeatureSpec
from edh.core.registry import register_encoder
from edh.utils.weights import load_encoder_weights


class BasicBlock(nn.Module):
    """Two 3x3 convs and the identity.

    ``dilation`` spaces the taps of the second conv, ``first_dilation`` (default: ``dilation``) those of
    the first, which would carry the stride: the first block of a dilated stage keeps the previous
    dilation there, as timm does (torchvision refuses to dilate this block). Padding keeps the size.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, channels, H / stride, W / stride)``.
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1, first_dilation: int | None = None) -> None:
        super().__init__()
        first = first_dilation or dilation
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, first, dilation=first, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision and timm: BatchNorm's backward does not need its output
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4, and the identity (torchvision's v1.5: the stride is on the 3x3).

    The 3x3's taps are spaced by ``first_dilation`` (default: ``dilation``): the first block of a dilated
    stage keeps the previous dilation, as torchvision and timm do.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, 4 * channels, H / stride, W / stride)``.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1, first_dilation: int | None = None) -> None:
        super().__init__()
        first = first_dilation or dilation
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, first, dilation=first, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


OUTPUT_STRIDES = (8, 16, 32)
_FIRST_DILATED = {32: 4, 16: 3, 8: 2}  # output stride -> the first stage (0..3) that dilates instead of striding


class ResNetEncoder(Encoder):
    """ResNet trunk returning every stage.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage.
        in_channels: image channels (1 for grayscale, 4 for RGB+NIR...).
        width: channels of the stem; stages use width, 2x, 4x, 8x (times the block expansion).
        weights: a local torchvision or timm weight file (``.safetensors`` / ``.pth``) to load, or its id
            in a local cache: ``torchvision:ResNet50_Weights.IMAGENET1K_V2``, ``hf-hub:timm/resnet50.a1_in1k``
            (resolved offline by `edh.utils.weight_caches`).
        zero_init_residual: start each residual branch at zero (its last BatchNorm gamma = 0).
        output_stride: the deepest level's stride: 32 (plain), 16 (layer4 dilated 2) or 8 (layer3
            dilated 2, layer4 dilated 4), as torchvision's ``replace_stride_with_dilation`` and timm's
            ``output_stride``: the conv of a dilated stage's first block that would carry the stride keeps
            the previous dilation. DeepLab decoders need 8 or 16. (smp dilates every conv of the stage:
            the same weights, slightly different receptive fields in those first blocks.)
        depth: how many levels to build and return, 1..5 (smp's ``encoder_depth``): 3 stops after
            layer2 (strides 2, 4, 8), as smp's PSPNet does; the stages not built cost nothing, and their
            keys in a weight file are skipped.

    Shapes:
        input ``(B, in_channels, H, W)`` -> ``[(B, 64, H/2, W/2), (B, 64e, H/4, W/4), ...,
        (B, 512e, H/os, W/os)]`` with e the block expansion; ``out_spec.strides`` gives each level's.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], in_channels: int = 3,
                 width: int = 64, weights: str | None = None, zero_init_residual: bool = False,
                 output_stride: int = 32, depth: int = 5) -> None:
        super().__init__()
        if not 1 <= depth <= 5:
            raise ValueError(f"encoder.depth must be 1..5 (levels: stem, layer1..layer4), got {depth!r}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"encoder.output_stride must be 8, 16 or 32 (the deepest level's stride), got "
                             f"{output_stride!r}; use 16 or 8 for a dilated encoder (DeepLab), 32 otherwise")
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._inplanes, self._dilation = width, 1
        names, strides = ("stem", "layer1", "layer2", "layer3", "layer4"), [2, 4]
        for index, count in enumerate(layers[:depth - 1]):  # the stages below depth are not built
            stride = 1 if index == 0 else 2
            dilate = index >= _FIRST_DILATED[output_stride]
            setattr(self, names[index + 1], self._make_stage(block, width * 2**index, count, stride, dilate))
            if index:
                strides.append(strides[-1] * (1 if dilate else 2))
        self.depth = depth
        self.skipped_weight_prefixes = tuple(f"{name}." for name in names[depth:])  # stages not built
        channels = (width, *(width * 2**i * block.expansion for i in range(4)))
        self.out_spec = FeatureSpec("pyramid", channels[:depth], tuple(strides)[:depth], names[:depth])
        self._init_weights(zero_init_residual)
        if weights:
            load_encoder_weights(self, weights)

    def _make_stage(self, block: type[BasicBlock | Bottleneck], channels: int, count: int, stride: int,
                    dilate: bool = False) -> nn.Sequential:
        previous = self._dilation
        if dilate:  # the stride becomes dilation; the first block keeps the previous one (torchvision)
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._inplanes != channels * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, channels * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(channels * block.expansion),
            )
        blocks = [block(self._inplanes, channels, stride, downsample, self._dilation, first_dilation=previous)]
        self._inplanes = channels * block.expansion
        blocks += [block(self._inplanes, channels, dilation=self._dilation) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                last = getattr(module, "bn3", None) if isinstance(module, Bottleneck) else getattr(module, "bn2", None)
                if isinstance(module, (BasicBlock, Bottleneck)) and last is not None:
                    nn.init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        if self.depth == 1:
            return [stem]
        levels = [stem, self.layer1(self.maxpool(stem))]  # + (B, 64e, H/4, W/4)
        for name in ("layer2", "layer3", "layer4")[:self.depth - 2]:
            levels.append(getattr(self, name)(levels[-1]))  # (B, 128e, H/8, W/8), (B, 256e, H/16), (B, 512e, H/os)
        return levels


def _variant(name: str, block: type[BasicBlock | Bottleneck], layers: list[int], width: int = 64) -> None:
    def builder(in_channels: int = 3, weights: str | None = None, zero_init_residual: bool = False,
                output_stride: Literal[8, 16, 32] = 32, depth: Literal[1, 2, 3, 4, 5] = 5) -> ResNetEncoder:
        return ResNetEncoder(block, layers, in_channels, width, weights, zero_init_residual, output_stride, depth)

    builder.__name__ = name
    builder.__doc__ = f"{name}: ResNet with {block.__name__} blocks {layers} (output_stride 16 or 8: dilated)."
    register_encoder(name)(builder)


_variant("resnet18", BasicBlock, [2, 2, 2, 2])
_variant("resnet34", BasicBlock, [3, 4, 6, 3])
_variant("resnet50", Bottleneck, [3, 4, 6, 3])
_variant("resnet101", Bottleneck, [3, 4, 23, 3])
_variant("test_resnet", BasicBlock, [1, 1, 1, 1], width=8)  # tiny, for tests
