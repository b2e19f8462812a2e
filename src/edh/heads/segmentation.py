"""Semantic segmentation: a 1x1 convolution to classes, up-sampled to the input size."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from edh.ops.crop import crop_to
from edh.core.features import FeatureSpec
from edh.heads.base import Head
from edh.core.registry import register_head
from edh.utils.images import open_upright

LOSSES = ("ce", "dice", "ce+dice")


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None,
              eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss, ``1 - mean_k dice_k`` over the classes present in the batch.

    torchmetrics' Dice is a metric (no gradient) and torchvision has no Dice loss, hence this.

    Args:
        logits: ``(B, K, H, W)``.
        target: ``(B, H, W)`` class ids; pixels equal to ``ignore_index`` are left out.
        eps: smoothing added to numerator and denominator.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)  # (B, K, H, W)
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(probs.dtype)  # (B, K, H, W)
    weight = valid.unsqueeze(1).to(probs.dtype)
    probs, one_hot = probs * weight, one_hot * weight
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)  # (K,)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + eps) / (cardinality + eps)
    present = one_hot.sum(dims) > 0
    return 1.0 - (dice[present].mean() if present.any() else dice.mean())


@register_head("segmentation")
class SegmentationHead(Head):
    """1x1 conv to class logits at the source's resolution, then bilinear up-sampling to the input.

    Reads pyramid level 0 (the highest resolution) of its source: the last block of a ``unet``
    decoder, an ``fpn`` level, or an encoder level. Up-sampling is by the level's stride and the
    result is cropped to the input size (maps are aligned to the input's top-left corner).

    Args:
        num_classes: classes including background (0).
        class_names: a name per class.
        loss: ``ce`` (cross-entropy), ``dice`` (soft Dice) or ``ce+dice`` (their sum).
        ignore_index: a target value to leave out of loss and metrics (e.g. 255).
        class_weights: cross-entropy weight per class.
        dropout: 2-D dropout before the 1x1 conv.

    Shapes: features ``[(B, C, H / s, W / s), ...]`` -> logits ``(B, num_classes, H, W)``.
    """

    accepts = ("pyramid",)
    task = "segmentation"
    reads_level = 0
    function = "1x1 conv to classes, upsample to input size"

    def __init__(self, in_spec: FeatureSpec, num_classes: int, class_names: list[str] | None = None,
                 loss: Literal["ce", "dice", "ce+dice"] = "ce", ignore_index: int | None = None,
                 class_weights: list[float] | None = None, dropout: float = 0.0) -> None:
        super().__init__(in_spec)
        if num_classes < 2:
            raise ValueError(f"segmentation needs num_classes >= 2 (background + at least one class), got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        if loss not in LOSSES:
            raise ValueError(f"segmentation loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values but num_classes is {num_classes}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.loss_kind = loss
        self.ignore_index = ignore_index
        self.stride = in_spec.strides[0]
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.conv = nn.Conv2d(in_spec.channels[0], num_classes, 1)
        if class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), persistent=False)
        else:
            self.class_weights = None

    def bind_data(self, info: Any) -> None:
        """Refuse masks with more classes than ``num_classes`` (when the data states its mask classes),
        and an ``ignore_index`` other than the data's, before the first step."""
        from edh.core.errors import SpecError
        from edh.heads.data_checks import check_classes, data_target, head_path

        target = data_target(self, info, ("segmentation",), extra_names="mask_class_names")
        check_classes(self, target, 0, "mask classes (background included)")
        ignore = target.defaults.get("ignore_index") if target is not None else None
        if ignore is not None and ignore != self.ignore_index:
            path = head_path(self)
            raise SpecError(
                f"{target.dataset} marks mask pixels to leave out with {ignore} (data.ignore_index), but "
                f"{path}.ignore_index is {self.ignore_index}: those pixels would be taken for class {ignore} and "
                f"stop training. Set ignore_index: {ignore} in {path}, or leave it out to take the data's"
            )

    def forward(self, features: Any, input_size: tuple[int, int] | None = None, **context: Any) -> torch.Tensor:
        x = features[0] if isinstance(features, (list, tuple)) else features  # (B, C, H / s, W / s)
        logits = self.conv(self.dropout(x))  # (B, K, H / s, W / s)
        if self.stride > 1:
            logits = F.interpolate(logits, scale_factor=self.stride, mode="bilinear", align_corners=False)
        if input_size is not None:
            if logits.shape[-2] < input_size[0] or logits.shape[-1] < input_size[1]:
                return F.interpolate(logits, size=tuple(input_size), mode="bilinear", align_corners=False)
            logits = crop_to(logits, input_size)  # no-op when it fits: a full slice would cost a copy in backward
        return logits  # (B, K, H, W)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = targets.long()
        if targets.shape[-2:] != outputs.shape[-2:]:
            raise ValueError(f"segmentation logits are {tuple(outputs.shape[-2:])} but masks are "
                             f"{tuple(targets.shape[-2:])}; masks must have the input images' size")
        terms = {}
        if self.loss_kind in ("ce", "ce+dice"):
            ignore = -100 if self.ignore_index is None else self.ignore_index
            terms["ce"] = F.cross_entropy(outputs.float(), targets, weight=self.class_weights, ignore_index=ignore)
        if self.loss_kind in ("dice", "ce+dice"):
            terms["dice"] = dice_loss(outputs, targets, self.ignore_index)
        return terms

    def predict(self, outputs: torch.Tensor, **meta: Any) -> dict[str, Any]:
        """``mask`` ``(B, H, W)`` int64 class map, ``probs`` ``(B, K, H, W)``, and the ``class_names``."""
        probs = outputs.float().softmax(dim=1)
        return {"mask": probs.argmax(dim=1), "probs": probs, "class_names": self.class_names}

    def make_metrics(self, stage: str = "val"):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

        n, ignore = self.num_classes, self.ignore_index
        common = dict(ignore_index=ignore, validate_args=False)
        metrics = {"miou": MulticlassJaccardIndex(n, average="macro", **common),
                   "pixel_acc": MulticlassAccuracy(n, average="micro", **common)}
        if stage == "test":
            metrics["iou"] = MulticlassJaccardIndex(n, average=None, **common)
            metrics["dice"] = MulticlassF1Score(n, average=None, **common)  # pixel F1 is Dice
        return MetricCollection(metrics)

    def update_metrics(self, metrics, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        metrics.update(outputs.argmax(dim=1), targets.long())

    def summarize(self, values: dict[str, torch.Tensor], out_dir: Path | None = None) -> tuple[dict[str, float], list[str]]:
        scalars = {k: float(v) for k, v in values.items() if v.numel() == 1}
        lines = []
        if "iou" in values:
            width = max(5, *(len(n) for n in self.class_names))
            lines.append(f"{'class':<{width}}     IoU    Dice")
            for name, iou, dice in zip(self.class_names, values["iou"].tolist(), values["dice"].tolist()):
                lines.append(f"{name:<{width}}  {iou:6.3f}  {dice:6.3f}")
        return scalars, lines

    def format_prediction(self, prediction: dict[str, Any], index: int) -> str:
        mask = prediction["mask"][index]
        counts = torch.bincount(mask.flatten(), minlength=self.num_classes)
        total = max(1, mask.numel())
        shown = [(i, int(c)) for i, c in enumerate(counts.tolist()) if c and i != 0]
        shown.sort(key=lambda pair: -pair[1])
        if not shown:
            return f"only {self.class_names[0]}"
        return ", ".join(f"{self.class_names[i]} {100 * c / total:.1f}%" for i, c in shown)

    def write_predictions(self, prediction: dict[str, Any], images: torch.Tensor, paths: list[Path],
                          out_dir: Path) -> list[Path]:
        """``<stem>.overlay.png`` per image: the image file (or, where there is none, the model input)
        with the predicted classes in colour and a legend."""
        out_dir = Path(out_dir)
        return [overlay_png(path, prediction["mask"][index], self.class_names,
                            out_dir / f"{Path(path).stem}.overlay.png", image=images[index])
                for index, path in enumerate(paths)]


def class_colours(num_classes: int) -> list[tuple[float, float, float]]:
    """A distinct RGB colour per class (matplotlib's tab20, then tab20b), class 0 black."""
    import matplotlib

    cmap = [*matplotlib.colormaps["tab20"].colors, *matplotlib.colormaps["tab20b"].colors]
    return [(0.0, 0.0, 0.0)] + [tuple(cmap[(i - 1) % len(cmap)]) for i in range(1, num_classes)]


def overlay_png(image_path: str | Path, mask: torch.Tensor, class_names: list[str], path: Path,
                alpha: float = 0.5, image: torch.Tensor | None = None) -> Path:
    """The image at ``image_path`` (resized to the mask) with every non-background class of ``mask``
    ``(H, W)`` painted in its colour, beside a legend of the classes present; written to ``path``.
    Where ``image_path`` is not a file, the model input ``image`` ``(C, H, W)`` is shown instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch
    from PIL import Image

    from edh.utils.plots import display_image, save_figure

    mask = mask.cpu().numpy()
    if image is not None and not Path(image_path).is_file():
        picture = display_image(F.interpolate(image[None].float(), size=mask.shape, mode="bilinear")[0])
        picture = np.repeat(picture[..., None], 3, axis=2) if picture.ndim == 2 else picture
    else:
        original = open_upright(image_path)  # EXIF orientation applied, as the model read it
        picture = np.asarray(original.convert("RGB").resize(mask.shape[::-1], Image.BILINEAR), dtype=np.float32) / 255
    colours = np.array(class_colours(len(class_names)), dtype=np.float32)
    painted = np.where((mask > 0)[..., None], (1 - alpha) * picture + alpha * colours[mask], picture)
    present = [int(c) for c in np.unique(mask) if c > 0]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    axes[0].imshow(picture)
    axes[0].set_title(Path(image_path).name, fontsize=9)
    axes[1].imshow(painted)
    axes[1].set_title("predicted classes", fontsize=9)
    for axis in axes:
        axis.axis("off")
    handles = [Patch(color=colours[c], label=class_names[c]) for c in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    else:
        fig.text(0.5, 0.02, f"only {class_names[0]}", ha="center", fontsize=8)
    return save_figure(fig, path)
