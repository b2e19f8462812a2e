"""``reconstruction``: the objective of a decoder whose output is the result (an autoencoder).

A model without heads is scored by its decoder's `Decoder.objective` (``conv_transpose`` names this
head type with its ``loss`` / ``kl_weight``): the workflows build it behind the same Head contract
as any head, while the model itself keeps no head (its role table shows Encoder and Decoder only,
as in the article). It can also be attached explicitly, ``heads: {image: {type: reconstruction,
source: decoder}}``, beside other heads.

The target is ``targets["image"]`` when the data gives one (e.g. the clean image of a denoising
pair), else the model's input (``targets["inputs"]``); both live in the data's normalised pixel
space, as the decoder's output does. Metrics: PSNR and SSIM (torchmetrics) on pixels mapped back
to [0, 1] with the data's mean and std (`bind_data`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.core.registry import register_head
from edh.heads.base import Head
from edh.utils.plots import image_rows_png, to_pixels

TARGET_KEYS = ("image", "inputs")  # the first present is the reconstruction target
LOSSES = ("mse", "l1")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, averaged over the batch. ``mean``: ``(B, D)``."""
    return (-0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1)).mean()


def _images(output: Any) -> torch.Tensor:
    """The reconstructed images of a decoder output: a one-level pyramid, or a variational output
    (a named tuple whose first field is the images)."""
    return output[0]


@register_head("reconstruction")
class ReconstructionHead(Head):
    """Scores a decoder's images against the input (or ``targets["image"]``); no parameters.

    Args:
        loss: ``mse`` or ``l1`` on normalised pixels.
        kl_weight: weight of the KL term when the output carries a latent Gaussian (``mean``,
            ``logvar``: a variational decoder). The KL is divided by the values per sample.
        out_channels: the channels the decoder produces (checked against the data's).
        image_size: the input side a bottleneck decoder was built for (checked against the data's).

    Shapes: a one-level pyramid ``[(B, C, H', W')]`` (``H' >= H``: cropped to the target) -> the same.
    """

    accepts = ("pyramid",)
    task = "reconstruction"
    function = "the decoder's images, scored against the input (PSNR, SSIM)"

    def __init__(self, in_spec: FeatureSpec, loss: Literal["mse", "l1"] = "mse", kl_weight: float = 1.0,
                 out_channels: int | None = None, image_size: list[int] | None = None) -> None:
        super().__init__(in_spec)
        if loss not in LOSSES:
            raise ValueError(f"reconstruction loss must be mse or l1, got {loss!r}")
        self.kind, self.kl_weight = loss, kl_weight
        self.out_channels, self.image_size = out_channels, image_size
        self.mean: tuple[float, ...] = (0.0,)
        self.std: tuple[float, ...] = (1.0,)
        self.kernel = 11

    def bind_data(self, info: Any) -> None:
        """The data's normalisation (for metrics and pictures); a decoder built for another channel
        count or image size than the data's is an error here, before training starts."""
        self.mean, self.std = tuple(info.mean), tuple(info.std)
        if info.input_kind == "image" and self.out_channels is not None and self.out_channels != info.in_channels:
            raise SpecError(f"model.decoder.out_channels is {self.out_channels} but the data has "
                            f"{info.in_channels}-channel images; set out_channels: {info.in_channels}")
        if self.image_size is not None and info.image_size and tuple(self.image_size) != tuple(info.image_size):
            raise SpecError(f"model.decoder.image_size is {list(self.image_size)} but the data gives "
                            f"{list(info.image_size)} images; set image_size: {info.image_size[0]}")
        if info.image_size:
            side = min(info.image_size)
            self.kernel = min(11, side if side % 2 else side - 1)

    def forward(self, features: Any, **context: Any) -> Any:
        return features

    def select_targets(self, targets: dict[str, Any], key: str) -> torch.Tensor:
        for name in TARGET_KEYS:
            if name in targets:
                return targets[name]
        raise KeyError("image")

    def _cropped(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        images = _images(output)
        if images.shape[1] != target.shape[1]:
            raise ValueError(f"the decoder outputs {images.shape[1]}-channel images but the data has "
                             f"{target.shape[1]} channels; set decoder.out_channels: {target.shape[1]}")
        if images.shape[-2] < target.shape[-2] or images.shape[-1] < target.shape[-1]:
            raise ValueError(f"the decoder outputs {tuple(images.shape[-2:])} images, smaller than the "
                             f"{tuple(target.shape[-2:])} targets")
        return images[..., :target.shape[-2], :target.shape[-1]]  # fully convolutional: crop the overshoot

    def loss(self, outputs: Any, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        target = targets.float()
        images = self._cropped(outputs, target).float()
        error = F.mse_loss(images, target) if self.kind == "mse" else F.l1_loss(images, target)
        terms = {self.kind: error}
        logvar = getattr(outputs, "logvar", None)  # a variational decoder's latent Gaussian
        if logvar is not None:
            terms["kl"] = self.kl_weight * kl_divergence(outputs.mean.float(), logvar.float()) / target[0].numel()
        return terms

    def make_metrics(self, stage: str = "val"):
        from torchmetrics import MetricCollection
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        return MetricCollection({"psnr": PeakSignalNoiseRatio(data_range=1.0),
                                 "ssim": StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=self.kernel)})

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        return to_pixels(images, self.mean, self.std).to(images.device)

    def update_metrics(self, metrics, outputs: Any, targets: torch.Tensor) -> None:
        target = targets.float()
        metrics.update(self._pixels(self._cropped(outputs, target)), self._pixels(target))

    def predict(self, outputs: Any, inputs: torch.Tensor | None = None, **meta: Any) -> dict[str, Any]:
        """``images``: the reconstructions (cropped to the inputs); ``psnr`` ``(B,)`` per image, in dB,
        when ``inputs`` are given."""
        images = _images(outputs)
        result: dict[str, Any] = {"images": images, "inputs": inputs, "psnr": None}
        if inputs is not None:
            images = self._cropped(outputs, inputs)
            real, pred = self._pixels(inputs), self._pixels(images)
            mse = (pred - real).pow(2).flatten(1).mean(1).clamp_min(1e-10)  # (B,)
            result.update(images=images, psnr=10 * torch.log10(1 / mse))
        return result

    def format_prediction(self, prediction: dict[str, Any], index: int) -> str:
        if prediction["psnr"] is None:
            return ""
        return f"reconstruction psnr {float(prediction['psnr'][index]):.2f} dB"

    def prediction_json(self, prediction: dict[str, Any], index: int, source: Any = None,
                        input_size: Any = None) -> dict[str, Any]:
        """``{"psnr"}`` in dB (None without the inputs) and the reconstruction as a PNG (base64)."""
        from edh.utils.images import png_base64

        psnr = prediction["psnr"]
        pixels = to_pixels(prediction["images"][index:index + 1], self.mean, self.std)[0]  # (C, H, W) in [0, 1]
        return {"psnr": None if psnr is None else round(float(psnr[index]), 4),
                "image_png": png_base64((pixels * 255).round().byte().permute(1, 2, 0).squeeze(-1).numpy())}

    def picture_description(self) -> str:
        return "the inputs above their reconstructions"

    def write_predictions(self, prediction: dict[str, Any], images: torch.Tensor, paths: list[Path],
                          out_dir: Path, columns: int = 8) -> list[Path]:
        """Inputs above their reconstructions: ``OUT/<first image>_reconstructions.png``."""
        rows = []
        for start in range(0, len(images), columns):
            rows += [("inputs", images[start:start + columns]),
                     ("reconstructions", prediction["images"][start:start + columns])]
        path = Path(out_dir) / f"{Path(paths[0]).stem}_reconstructions.png"
        return [image_rows_png(rows, self.mean, self.std, path, columns)]
