"""``conv_transpose``: the decoder of a convolutional (variational) autoencoder.

It reads the encoder's deepest map and doubles the resolution with transposed convolutions back to
stride 1, ending in a 3x3 conv to image channels (no activation: the output lives in the data's
normalised pixel space, like the input). With ``latent_dim`` the deepest map is first squeezed
through a vector bottleneck; with ``variational`` that vector is a Gaussian (mean, log-variance),
sampled during training, and `ConvTransposeDecoder.sample` decodes draws from the prior N(0, I).

The decoder also carries its reconstruction loss options (``loss``, ``kl_weight``): in a model
without heads the decoder's output *is* the result, so, as a head does, it states how it is scored
(`objective` names the ``reconstruction`` head type with them, `edh.heads.reconstruction`).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import nn

from edh.decoders.base import Decoder
from edh.core.features import FeatureSpec
from edh.layers.conv import ConvNormAct
from edh.core.registry import register_decoder

RECONSTRUCTION_LOSSES = ("mse", "l1")


class VariationalOutput(NamedTuple):
    """A variational decoder's output: reconstructions and the latent Gaussian they came from.

    Attributes:
        images: ``(B, out_channels, H, W)`` (``output[0]``, as for a one-level pyramid).
        mean: ``(B, latent_dim)``.
        logvar: ``(B, latent_dim)`` log-variance.
    """

    images: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor


class UpBlock(nn.Sequential):
    """Transposed conv (kernel 4, stride 2: exactly 2x) -> norm -> ReLU -> 3x3 conv-norm-ReLU.

    Shapes: ``(B, in_channels, h, w)`` -> ``(B, out_channels, 2h, 2w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True) -> None:
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers += [nn.ReLU(inplace=True), ConvNormAct(out_channels, out_channels, 3, norm=norm)]
        super().__init__(*layers)


@register_decoder("conv_transpose")
class ConvTransposeDecoder(Decoder):
    """Up-samples the deepest encoder level to stride 1 and maps it to image channels.

    Args:
        in_spec: the encoder's pyramid; its deepest stride must be a power of two.
        out_channels: image channels to reconstruct (the data's; checked when training).
        channels: width of each 2x up-sampling block, deepest first (default: halving from the
            deepest width, at least 16).
        latent_dim: size of a vector bottleneck between encoder and decoder (``None``: the
            deepest map itself is the code, and any input size works).
        variational: make the bottleneck a Gaussian (needs ``latent_dim``): a VAE.
        image_size: input side (or ``[H, W]``) the bottleneck is built for (needs ``latent_dim``).
        loss: reconstruction loss, ``mse`` or ``l1`` (computed on normalised pixels).
        kl_weight: weight of the KL term of a variational decoder. The KL is per sample, divided
            by the number of output values, so it has the scale of the per-pixel loss.
        norm: BatchNorm in every block.

    Shapes: ``[..., (B, C, H / s, W / s)]`` -> ``[(B, out_channels, s * ceil(H / s), ...)]`` (a
    one-level pyramid), or a `VariationalOutput` when ``variational``.
    """

    accepts = ("pyramid",)

    def __init__(self, in_spec: FeatureSpec, out_channels: int = 1, channels: list[int] | None = None,
                 latent_dim: int | None = None, variational: bool = False, image_size: int | list[int] | None = None,
                 loss: Literal["mse", "l1"] = "mse", kl_weight: float = 1.0, norm: bool = True) -> None:
        super().__init__(in_spec)
        stride, width = in_spec.strides[-1], in_spec.channels[-1]
        if stride & (stride - 1):
            raise ValueError(f"conv_transpose needs a power-of-two deepest stride, got {stride} ({in_spec.describe()})")
        if loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"decoder.loss must be one of {', '.join(RECONSTRUCTION_LOSSES)}, got {loss!r}")
        if variational and latent_dim is None:
            raise ValueError("decoder.variational needs decoder.latent_dim (the size of the Gaussian latent)")
        if latent_dim is not None and image_size is None:
            raise ValueError("decoder.latent_dim needs decoder.image_size (the input side the bottleneck is built for)")
        steps = int(math.log2(stride))
        channels = list(channels) if channels is not None else [max(16, width // 2**(i + 1)) for i in range(steps)]
        if len(channels) != steps:
            raise ValueError(f"decoder.channels needs {steps} widths (one per 2x step from stride {stride} to 1), "
                             f"got {len(channels)}")
        self.out_channels, self.variational, self.latent_dim = out_channels, variational, latent_dim
        self.loss, self.kl_weight = loss, kl_weight
        self.stride = stride
        if latent_dim is not None:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            self.image_size = size
            self.grid = (-(-size[0] // stride), -(-size[1] // stride))
            flat = width * self.grid[0] * self.grid[1]
            self.to_latent = nn.Linear(flat, 2 * latent_dim if variational else latent_dim)
            self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[UpBlock(a, b, norm) for a, b in zip([width, *channels[:-1]], channels)])
        self.to_image = nn.Conv2d(channels[-1] if channels else width, out_channels, 3, padding=1)
        self.out_spec = FeatureSpec("pyramid", (out_channels,), (1,), ("image",))

    can_sample = property(lambda self: self.variational)

    def objective(self) -> tuple[str, dict]:
        """Scored as an autoencoder's output: `edh.heads.reconstruction` with this decoder's loss options."""
        return "reconstruction", {"loss": self.loss, "kl_weight": self.kl_weight, "out_channels": self.out_channels,
                                  "image_size": list(self.image_size) if self.latent_dim is not None else None}

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent vectors ``(B, latent_dim)`` -> images ``(B, out_channels, H, W)``."""
        x = self.from_latent(z).view(z.shape[0], -1, *self.grid)  # (B, C, h, w)
        return self.to_image(self.blocks(x))

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int] | None = None,
                **context) -> list[torch.Tensor] | VariationalOutput:
        """``input_size`` (the model passes it) crops a fully convolutional output to the input's size."""
        x = features[-1]  # (B, C, h, w)
        if self.latent_dim is None:
            images = self.to_image(self.blocks(x))  # (B, out_channels, s * h, s * w)
            return [images if input_size is None else images[..., :input_size[0], :input_size[1]]]
        if tuple(x.shape[-2:]) != self.grid:
            raise ValueError(
                f"decoder conv_transpose was built for {self.image_size[0]}x{self.image_size[1]} inputs (a "
                f"{self.grid[0]}x{self.grid[1]} deepest map) but got a {x.shape[-2]}x{x.shape[-1]} map; set "
                f"decoder.image_size to the data's image size ({x.shape[-2] * self.stride} here)"
            )
        code = self.to_latent(x.flatten(1))  # (B, latent) or (B, 2 * latent)
        if not self.variational:
            return [self.decode(code)]
        mean, logvar = code.chunk(2, dim=1)  # (B, latent_dim) each
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        return VariationalOutput(self.decode(z), mean, logvar)

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``count`` draws from the prior N(0, I): images ``(count, out_channels, H, W)``."""
        if not self.variational:
            raise ValueError("sampling needs a variational decoder: set decoder.variational: true and "
                             "decoder.latent_dim, then train again")
        device = self.to_image.weight.device
        z = torch.randn(count, self.latent_dim, generator=generator, device="cpu").to(device)
        return self.decode(z)
