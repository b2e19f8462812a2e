"""ResNet encoders (He et al. 2016) whose state dict matches torchvision's ``resnet*`` (minus ``fc``).

Output: a 5-level pyramid, strides 2 (stem), 4, 8, 16, 32, highest resolution first.
"""

from __future__ import annotations

import torch
from torch import nn

from edh.encoders.base import Encoder
from edh.core.features import FeatureSpec
from edh.core.registry import register_encoder
from edh.utils.weights import load_encoder_weights


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
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
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)  # stride on 3x3 (torchvision v1.5)
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


class ResNetEncoder(Encoder):
    """ResNet trunk returning every stage.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage.
        in_channels: image channels (1 for grayscale, 4 for RGB+NIR...).
        width: channels of the stem; stages use width, 2x, 4x, 8x (times the block expansion).
        weights: a local torchvision or timm weight file (``.safetensors`` / ``.pth``) to load.
        zero_init_residual: start each residual branch at zero (its last BatchNorm gamma = 0).

    Shapes:
        input ``(B, in_channels, H, W)`` -> ``[(B, 64, H/2, W/2), (B, 64e, H/4, W/4), ...,
        (B, 512e, H/32, W/32)]`` with e the block expansion.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], in_channels: int = 3,
                 width: int = 64, weights: str | None = None, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._inplanes = width
        stages = []
        for index, count in enumerate(layers):
            stages.append(self._make_stage(block, width * 2**index, count, stride=1 if index == 0 else 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        channels = (width, *(width * 2**i * block.expansion for i in range(4)))
        self.out_spec = FeatureSpec("pyramid", channels, (2, 4, 8, 16, 32),
                                    ("stem", "layer1", "layer2", "layer3", "layer4"))
        self._init_weights(zero_init_residual)
        if weights:
            load_encoder_weights(self, weights)

    def _make_stage(self, block: type[BasicBlock | Bottleneck], channels: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != channels * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, channels * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(channels * block.expansion),
            )
        blocks = [block(self._inplanes, channels, stride, downsample)]
        self._inplanes = channels * block.expansion
        blocks += [block(self._inplanes, channels) for _ in range(1, count)]
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
        c2 = self.layer1(self.maxpool(stem))  # (B, 64e, H/4, W/4)
        c3 = self.layer2(c2)  # (B, 128e, H/8, W/8)
        c4 = self.layer3(c3)  # (B, 256e, H/16, W/16)
        c5 = self.layer4(c4)  # (B, 512e, H/32, W/32)
        return [stem, c2, c3, c4, c5]


def _variant(name: str, block: type[BasicBlock | Bottleneck], layers: list[int], width: int = 64) -> None:
    def builder(in_channels: int = 3, weights: str | None = None, zero_init_residual: bool = False) -> ResNetEncoder:
        return ResNetEncoder(block, layers, in_channels, width, weights, zero_init_residual)

    builder.__name__ = name
    builder.__doc__ = f"{name}: ResNet with {block.__name__} blocks {layers}."
    register_encoder(name)(builder)


_variant("resnet18", BasicBlock, [2, 2, 2, 2])
_variant("resnet34", BasicBlock, [3, 4, 6, 3])
_variant("resnet50", Bottleneck, [3, 4, 6, 3])
_variant("resnet101", Bottleneck, [3, 4, 23, 3])
_variant("test_resnet", BasicBlock, [1, 1, 1, 1], width=8)  # tiny, for tests
