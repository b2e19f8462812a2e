"""Semantic segmentation: a 1x1 (or 3x3) convolution to classes, up-sampled to the input size; its
losses are in `edh.heads.segmentation_losses`, its per-class IoU, Dice, precision and recall here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.core.registry import register_head
from edh.heads.base import Head
from edh.heads.segmentation_losses import SegmentationLoss
from edh.ops.crop import crop_to
from edh.utils.images import open_upright


PER_CLASS = (("iou", "IoU"), ("dice", "Dice"), ("precision", "Precision"), ("recall", "Recall"))


def class_map(scores: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` -> ``(B, H, W)`` index of the largest class (the first on ties, as ``argmax``).
    ``max(dim=1).indices``: on the CPU ``argmax`` over the class dimension of a ``(B, K, H, W)`` map is
    about 10x slower (20 ms against 2 ms for 32 x 11 x 64 x 64)."""
    return scores.max(dim=1).indices

@register_head("segmentation")
class SegmentationHead(Head):
    """A conv to class logits at the source's resolution, then bilinear up-sampling to the input.

    Reads pyramid level 0 (the highest resolution) of its source: the last block of a ``unet``
    decoder, an ``fpn`` level, or an encoder level. Up-sampling is by the level's stride and the
    result is cropped to the input size (maps are aligned to the input's top-left corner).

    Args:
        num_classes: classes including background (0).
        class_names: a name per class.
        loss: ``ce`` (cross-entropy), ``dice``, ``focal``, ``lovasz``, ``jaccard``, ``tversky``; a sum
            such as ``ce+dice``; or weights such as ``{ce: 1.0, dice: 0.5}``. Each term is its own
            (weighted) loss term in the training log. All but ``ce`` are segmentation_models_pytorch's
            losses; `edh.heads.segmentation_losses` says what each option applies to.
        loss_options: per-loss options: ``focal: {gamma: 2.0, alpha: null}``,
            ``tversky: {alpha: 0.3, beta: 0.7, gamma: 1.0}`` (alpha weighs false positives, beta false
            negatives), ``lovasz: {per_image: false}``.
        ignore_index: a target value to leave out of every loss and metric (e.g. 255).
        class_weights: a weight per class, for ``ce`` and multi-class ``focal`` (the other losses
            weigh classes equally).
        binary: with ``num_classes: 2``, one logit channel and a sigmoid (smp's ``classes=1``); the
            losses run in smp's binary mode (``ce`` is BCE with logits) and ``predict`` gives the
            same ``mask`` and two-class ``probs`` as a two-class head.
        kernel_size: 1 (the U-Net paper's 1x1 conv; smp's FPN, DeepLab, Linknet) or 3 (smp's Unet,
            PSPNet, MAnet, PAN).
        dropout: 2-D dropout before the conv.

    Shapes: features ``[(B, C, H / s, W / s), ...]`` -> logits ``(B, num_classes, H, W)``
    (``(B, 1, H, W)`` when ``binary``).
    """

    accepts = ("pyramid",)
    task = "segmentation"
    reads_level = 0
    function = "1x1 conv to classes, upsample to input size"
    tiling = "blend"  # its logits are a per-pixel map at the input's resolution: tiles are blended (Head.tiling)

    def __init__(self, in_spec: FeatureSpec, num_classes: int, class_names: list[str] | None = None,
                 loss: str | dict[str, float] = "ce", loss_options: dict[str, dict[str, Any]] | None = None,
                 ignore_index: int | None = None, class_weights: list[float] | None = None, binary: bool = False,
                 kernel_size: Literal[1, 3] = 1, dropout: float = 0.0) -> None:
        super().__init__(in_spec)
        if num_classes < 2:
            raise ValueError(f"segmentation needs num_classes >= 2 (background + at least one class), got {num_classes}"
                             + ("; a binary head has num_classes: 2 and binary: true" if num_classes == 1 else ""))
        if binary and num_classes != 2:
            raise SpecError(f"binary: true is one foreground class against the background, so num_classes must be 2, "
                            f"got {num_classes}; set num_classes: 2 or binary: false")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values but num_classes is {num_classes}")
        if kernel_size not in (1, 3):
            raise SpecError(f"kernel_size must be 1 or 3, got {kernel_size!r}")
        self.criterion = SegmentationLoss(loss, loss_options, binary, ignore_index, class_weights)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.ignore_index = ignore_index
        self.binary = binary
        self.stride = in_spec.strides[0]
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.conv = nn.Conv2d(in_spec.channels[0], 1 if binary else num_classes, kernel_size, padding=kernel_size // 2)
        if kernel_size != 1 or binary:
            self.function = (f"{kernel_size}x{kernel_size} conv to " + ("1 logit (sigmoid)" if binary else "classes")
                             + ", upsample to input size")
        if class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), persistent=False)
        else:
            self.class_weights = None

    def bind_data(self, info: Any) -> None:
        """Refuse masks with more classes than ``num_classes`` (when the data states its mask classes),
        and an ``ignore_index`` other than the data's, before the first step."""
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
        """Each loss term (times its weight) of ``(B, K, H, W)`` logits against ``(B, H, W)`` masks."""
        if targets.shape[-2:] != outputs.shape[-2:]:
            raise ValueError(f"segmentation logits are {tuple(outputs.shape[-2:])} but masks are "
                             f"{tuple(targets.shape[-2:])}; masks must have the input images' size")
        return self.criterion(outputs, targets, self.class_weights)

    def predict(self, outputs: torch.Tensor, **meta: Any) -> dict[str, Any]:
        """``mask`` ``(B, H, W)`` int64 class map, ``probs`` ``(B, K, H, W)``, and the ``class_names``.
        Binary: ``mask`` is ``p >= 0.5`` and ``probs`` is ``[1 - p, p]``, as a two-class head's."""
        if self.binary:
            p = outputs.float().sigmoid()  # (B, 1, H, W)
            probs = torch.cat([1 - p, p], dim=1)  # (B, 2, H, W)
            return {"mask": (p[:, 0] >= 0.5).long(), "probs": probs, "class_names": self.class_names}
        probs = outputs.float().softmax(dim=1)  # (B, K, H, W)
        return {"mask": class_map(probs), "probs": probs, "class_names": self.class_names}

    def make_metrics(self, stage: str = "val"):
        """mIoU and pixel accuracy; at ``test`` also per-class IoU, Dice, precision and recall."""
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex,
                                                 MulticlassPrecision, MulticlassRecall)

        n, ignore = self.num_classes, self.ignore_index
        common = dict(ignore_index=ignore, validate_args=False)
        metrics = {"miou": MulticlassJaccardIndex(n, average="macro", **common),
                   "pixel_acc": MulticlassAccuracy(n, average="micro", **common)}
        if stage == "test":
            metrics["iou"] = MulticlassJaccardIndex(n, average=None, **common)
            metrics["dice"] = MulticlassF1Score(n, average=None, **common)  # pixel F1 is Dice
            metrics["precision"] = MulticlassPrecision(n, average=None, **common)
            metrics["recall"] = MulticlassRecall(n, average=None, **common)
        return MetricCollection(metrics)

    def update_metrics(self, metrics, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if self.binary:
            mask = (outputs[:, 0].float().sigmoid() >= 0.5).long()  # (B, H, W): as predict's
        else:
            mask = class_map(outputs)  # (B, H, W)
        metrics.update(mask, targets.long())

    def summarize(self, values: dict[str, torch.Tensor], out_dir: Path | None = None) -> tuple[dict[str, float], list[str]]:
        """The scalars (``miou``, ``pixel_acc``, and each per-class figure as ``iou/<class>``,
        ``dice/<class>``, ``precision/<class>``, ``recall/<class>``) and a table of the per-class ones."""
        scalars = {k: float(v) for k, v in values.items() if v.numel() == 1}
        columns = [(key, title) for key, title in PER_CLASS
                   if key in values and values[key].numel() == self.num_classes]
        if not columns:
            return scalars, []
        table = {key: values[key].tolist() for key, _ in columns}
        for key, figures in table.items():
            scalars.update({f"{key}/{name}": value for name, value in zip(self.class_names, figures)})
        width = max(5, *(len(n) for n in self.class_names))
        lines = [f"{'class':<{width}}" + "".join(f"  {title:>9}" for _, title in columns)]
        for index, name in enumerate(self.class_names):
            lines.append(f"{name:<{width}}" + "".join(f"  {table[key][index]:9.3f}" for key, _ in columns))
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

    def prediction_json(self, prediction: dict[str, Any], index: int, source: Path | None = None,
                        input_size: tuple[int, int] | None = None) -> dict[str, Any]:
        """``{"mask_png", "size", "class_names", "fractions"}``: the class map as a PNG of class indices
        (8-bit, 16-bit past 256 classes) at the image's own size, and each present class's share of the pixels."""
        from edh.utils.images import png_base64

        mask = prediction["mask"][index].cpu()
        counts = torch.bincount(mask.flatten(), minlength=self.num_classes).tolist()
        total = max(1, mask.numel())
        pixels = mask.numpy().astype("uint8" if self.num_classes <= 256 else "uint16")
        return {"mask_png": png_base64(pixels), "size": list(mask.shape), "class_names": list(self.class_names),
                "fractions": {self.class_names[i]: round(c / total, 6) for i, c in enumerate(counts) if c}}

    def picture_description(self) -> str:
        return "each pixel coloured by its predicted class"

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
