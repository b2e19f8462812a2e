"""The loss and metrics of a model without heads, whose decoder output is the result (an autoencoder).

The target is the model's input (``targets["inputs"]``, which training and evaluation add for a model
without heads) or, when the data provides one, ``targets["image"]`` (e.g. the clean image of a
denoising pair). Both live in the data's normalised pixel space, as the decoder's output does.

The loss type (``mse`` / ``l1``) and the KL weight of a variational decoder are options of the
decoder (see `edh.decoders.conv`); metrics PSNR and SSIM (torchmetrics) are computed on pixels
mapped back to [0, 1] with the data's mean and std.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.data.base import DataInfo
from edh.core.registry import lookup
from edh.core.spec import RunSpec
from edh.core.errors import SpecError

TARGET_KEYS = ("image", "inputs")  # the first present is the reconstruction target


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, averaged over the batch. ``mean``: ``(B, D)``."""
    return (-0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1)).mean()


class ReconstructionLoss(nn.Module):
    """``(decoder_output, targets) -> {name: loss}`` plus PSNR / SSIM metrics.

    An ``nn.Module`` so that Lightning moves its metric states with the model.

    Args:
        loss: ``mse`` or ``l1``.
        kl_weight: weight of the KL term (variational decoders only).
        mean, std: the data's per-channel normalisation, to map pixels back to [0, 1] for metrics.
        in_channels: the data's image channels (checked against the decoder's output).
    """

    def __init__(self, loss: str = "mse", kl_weight: float = 1.0, mean: tuple[float, ...] = (0.0,),
                 std: tuple[float, ...] = (1.0,), in_channels: int | None = None) -> None:
        super().__init__()
        if loss not in ("mse", "l1"):
            raise ValueError(f"reconstruction loss must be mse or l1, got {loss!r}")
        self.kind, self.kl_weight, self.in_channels = loss, kl_weight, in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.psnr = self.ssim = None

    @staticmethod
    def target_of(targets: dict[str, Any]) -> torch.Tensor:
        for key in TARGET_KEYS:
            if key in targets:
                return targets[key]
        raise KeyError(f"a model without heads reconstructs targets['image'] or its inputs (targets['inputs']); "
                       f"this batch only has {sorted(targets)}")

    def _images(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        images = output[0]  # a one-level pyramid, or VariationalOutput.images
        if images.shape[1] != target.shape[1]:
            raise ValueError(f"the decoder outputs {images.shape[1]}-channel images but the data has "
                             f"{target.shape[1]} channels; set decoder.out_channels: {target.shape[1]}")
        if images.shape[-2] < target.shape[-2] or images.shape[-1] < target.shape[-1]:
            raise ValueError(f"the decoder outputs {tuple(images.shape[-2:])} images, smaller than the "
                             f"{tuple(target.shape[-2:])} targets")
        return images[..., :target.shape[-2], :target.shape[-1]]  # fully convolutional: crop the overshoot

    def forward(self, output: Any, targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        target = self.target_of(targets).float()
        images = self._images(output, target).float()
        error = F.mse_loss(images, target) if self.kind == "mse" else F.l1_loss(images, target)
        terms = {self.kind: error}
        if hasattr(output, "logvar"):
            terms["kl"] = self.kl_weight * kl_divergence(output.mean.float(), output.logvar.float()) / target[0].numel()
        return terms

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> pixels in [0, 1] (clamped)."""
        return (x.float() * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)

    def update_metrics(self, output: Any, targets: dict[str, Any]) -> None:
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        target = self.target_of(targets).float()
        images = self._images(output, target)
        if self.psnr is None:
            side = min(target.shape[-2:])
            kernel = min(11, side if side % 2 else side - 1)
            self.psnr = PeakSignalNoiseRatio(data_range=1.0).to(target.device)
            self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=kernel).to(target.device)
        pred, real = self.to_pixels(images.detach()), self.to_pixels(target)
        self.psnr.update(pred, real)
        self.ssim.update(pred, real)

    def compute_metrics(self) -> dict[str, torch.Tensor]:
        """PSNR (dB, from the mean squared error over every pixel seen) and mean SSIM; then reset."""
        if self.psnr is None:
            return {}
        values = {"psnr": self.psnr.compute().float(), "ssim": self.ssim.compute().float()}
        self.psnr.reset()
        self.ssim.reset()
        return values


def _decoder_options(spec: RunSpec) -> dict[str, Any]:
    """The decoder's options with its builder's defaults filled in."""
    decoder = spec.model.decoder
    if decoder is None:
        raise SpecError("a model without heads needs a decoder whose output is the result "
                        "(e.g. decoder: {name: conv_transpose}) or at least one head")
    builder = lookup("decoder", decoder.name, "model.decoder.name")
    target = builder.__init__ if inspect.isclass(builder) else builder
    defaults = {name: p.default for name, p in inspect.signature(target).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **decoder.options()}


def make_reconstruction_loss(spec: RunSpec, info: DataInfo) -> ReconstructionLoss:
    """The reconstruction loss for ``spec``'s decoder on data described by ``info``.

    ``loss`` and ``kl_weight`` come from the decoder's options when it has them (``conv_transpose``),
    else MSE. A decoder built for another channel count or image size than the data's is an error
    here, before training starts.
    """
    options = _decoder_options(spec)
    out_channels = options.get("out_channels")
    if info.input_kind == "image" and out_channels is not None and out_channels != info.in_channels:
        raise SpecError(f"model.decoder.out_channels is {out_channels} but the data {spec.data.name!r} has "
                        f"{info.in_channels}-channel images; set out_channels: {info.in_channels}")
    size = options.get("image_size")
    if options.get("latent_dim") is not None and size is not None and info.image_size:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(size) != tuple(info.image_size):
            raise SpecError(f"model.decoder.image_size is {list(size)} but the data {spec.data.name!r} gives "
                            f"{list(info.image_size)} images; set image_size: {info.image_size[0]}")
    return ReconstructionLoss(options.get("loss", "mse"), options.get("kl_weight", 1.0), info.mean, info.std,
                              info.in_channels)


# ---- pictures and lines for `edh predict` ------------------------------------------------------
def _pixels(images: torch.Tensor, info: DataInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.detach().float().cpu() * std + mean).clamp(0, 1)


def psnr_lines(info: DataInfo, output: Any, inputs: torch.Tensor) -> list[str]:
    """Per image, the PSNR of its reconstruction (``output`` as the decoder returns it) in [0, 1] pixels."""
    real = _pixels(inputs, info)
    pred = _pixels(output[0][..., :real.shape[-2], :real.shape[-1]], info)
    mse = (pred - real).pow(2).flatten(1).mean(1).clamp_min(1e-10)  # (B,)
    return [f"reconstruction psnr {float(10 * torch.log10(1 / m)):.2f} dB" for m in mse]


def image_grid_png(rows: list[tuple[str, torch.Tensor]], info: DataInfo, path: Path, columns: int = 8) -> Path:
    """Write labelled rows of images (normalised, ``(N, C, H, W)``) as one PNG grid; return ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edh.utils.plots import save_figure

    lines = []  # (label, chunk of at most `columns` images)
    for label, images in rows:
        pixels = _pixels(images, info)
        for start in range(0, len(pixels), columns):
            lines.append((label if start == 0 else "", pixels[start:start + columns]))
    fig, axes = plt.subplots(len(lines), columns, figsize=(1.1 * columns + 1.0, 1.1 * len(lines)), squeeze=False)
    for (label, pixels), axis_row in zip(lines, axes):
        for index, axis in enumerate(axis_row):
            axis.axis("off")
            if index < len(pixels):
                image = pixels[index].permute(1, 2, 0).numpy()
                axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        axis_row[0].set_title(label, fontsize=8, loc="left")
    return save_figure(fig, Path(path))
