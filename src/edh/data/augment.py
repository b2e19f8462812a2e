"""Joint augmentation, random crops and padded batches of images with their masks and boxes.

`augment_pipeline` turns a data spec's ``augment`` value (and ``crop_size``) into one
torchvision ``transforms.v2`` pipeline that moves a ``tv_tensors.Image``, its ``tv_tensors.Mask``
(one or several: a class map, an instance map) and, where present, its ``tv_tensors.BoundingBoxes``
(with their ``labels``) together, so a segmentation or detection target always stays on its
pixels. `PadCollate` batches images of different sizes for evaluation. In a run spec::

    data: {name: image-masks, root: /data/roads, crop_size: 256,
           augment: {hflip: 0.5, rotate: 10, scale: [0.5, 2.0], color: 0.2}}

``augment`` is a preset, ``none`` or ``flip`` (``{hflip: 0.5}``), or a mapping of the steps of
`AugmentSteps` (each left out is off). Augmentation is for training items only. Detection data
(``coco``, ``scenes``) also takes ``iou_crop`` (`RandomIoUCropResized`) and ``mosaic`` (four items
tiled into one: a dataset wrapper, `edh.data.mosaic.MosaicDataset`, not a step of this pipeline).

Fill values: pixels that come from outside the image (rotation corners, padding of a crop or of a
batch) are 0 in the image and ``mask_fill`` in the masks: the dataset's ``ignore_index`` when it has
one, so they count in no loss or metric, else 0 (background).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten  # as torchvision's v2 transforms flatten samples
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from edh.core.errors import SpecError

STEPS = ("hflip", "vflip", "scale", "rotate", "color", "iou_crop", "mosaic")
DETECTION_STEPS = ("iou_crop", "mosaic")  # steps that need boxes
PRESETS: dict[str, dict[str, Any]] = {"none": {}, "flip": {"hflip": 0.5}}


@dataclass(frozen=True)
class AugmentSteps:
    """The random steps of a training pipeline (all off by default), in the order they run.

    Attributes:
        hflip: probability of a horizontal flip (``true`` means 0.5).
        vflip: probability of a vertical flip (``true`` means 0.5).
        rotate: rotation by an angle drawn uniformly from ``[-rotate, rotate]`` degrees (0 to 180).
        scale: ``[low, high]``: resize by a factor drawn uniformly from it (0 < low <= high <= 10),
            then crop / pad back to the item's size, or to ``crop_size`` when it is set.
        color: brightness, contrast and saturation jitter strength (0 to 1): each factor is drawn
            from ``[1 - color, 1 + color]``; grayscale images get brightness and contrast only.
        iou_crop: probability of torchvision's ``v2.RandomIoUCrop`` (SSD's crop: a window that overlaps
            some box by at least a random IoU, or no crop), resized back to the item's size; it runs
            first. Detection data only (it needs boxes).
        mosaic: probability that a training item is four items tiled 2 x 2 around a random centre
            (`edh.data.mosaic.MosaicDataset`, applied to the split after this pipeline). Detection data only.
    """

    hflip: float = 0.0
    vflip: float = 0.0
    rotate: float = 0.0
    scale: tuple[float, float] | None = None
    color: float = 0.0
    iou_crop: float = 0.0
    mosaic: float = 0.0

    @property
    def active(self) -> bool:
        """Whether a step of the per-item pipeline is on (``mosaic`` is not one: see `MosaicDataset`)."""
        return bool(self.hflip or self.vflip or self.rotate or self.scale or self.color or self.iou_crop)


def _close(name: str, options: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(str(name), options, n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def _number(value: Any, where: str, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SpecError(f"{where} must be {what} ({low} to {high}), got {value!r}")
    return float(value)


def parse_augment(value: str | Mapping[str, Any] | None, where: str = "data.augment") -> AugmentSteps:
    """The steps of a data spec's ``augment``: a preset (``none``, ``flip`` = ``{hflip: 0.5}``) or a
    mapping of steps, ``{hflip: 0.5, vflip: 0.0, rotate: 15, scale: [0.5, 2.0], color: 0.2, iou_crop: 0.5,
    mosaic: 0.5}``, where a step left out is off (see `AugmentSteps` for each key). ``None`` is ``none``.

    Raises:
        SpecError: an unknown preset or step (naming ``where.key``, the valid ones and a close match), or
            a bad value.
    """
    if value is None:
        return AugmentSteps()
    if isinstance(value, str):
        if value not in PRESETS:
            raise SpecError(f"{where}: unknown preset {value!r}; use one of {', '.join(PRESETS)}, or a mapping of "
                            f"steps ({', '.join(STEPS)}){_close(value, tuple(PRESETS))}")
        value = PRESETS[value]
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be a preset ({', '.join(PRESETS)}) or a mapping of steps ({', '.join(STEPS)}), "
                        f"got {value!r}")
    steps: dict[str, Any] = {}
    for key, given in value.items():
        path = f"{where}.{key}"
        if key not in STEPS:
            raise SpecError(f"{path}: unknown augmentation step; valid steps: {', '.join(STEPS)}"
                            f"{_close(key, STEPS)}")
        if key in ("hflip", "vflip", "iou_crop", "mosaic"):
            given = 0.5 if given is True else 0.0 if given is False else given
            steps[key] = _number(given, path, 0.0, 1.0, "a probability")
        elif key == "rotate":
            steps[key] = _number(given, path, 0.0, 180.0, "an angle in degrees")
        elif key == "color":
            steps[key] = _number(given, path, 0.0, 1.0, "a jitter strength")
        elif given is not None:  # scale
            if not isinstance(given, (list, tuple)) or len(given) != 2:
                raise SpecError(f"{path} must be [low, high] resize factors, e.g. [0.5, 2.0], got {given!r}")
            low, high = (_number(v, path, 0.01, 10.0, "a resize factor") for v in given)
            if low > high:
                raise SpecError(f"{path} must be [low, high] with low <= high, got {list(given)}")
            steps[key] = (low, high)
    return AugmentSteps(**steps)


def parse_size(value: int | list[int] | tuple[int, ...] | None, where: str) -> tuple[int, int] | None:
    """``(H, W)`` from a side ``N`` or ``[h, w]`` (``None`` stays ``None``); a `SpecError` naming ``where``."""
    if value is None:
        return None
    sides = [value] * 2 if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(sides, (list, tuple)) or len(sides) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 8192 for s in sides)):
        raise SpecError(f"{where} must be a side N or [h, w] in pixels (1 to 8192), got {value!r}")
    return int(sides[0]), int(sides[1])


def _fill(inpt: Any, mask_fill: int) -> int:
    return mask_fill if isinstance(inpt, tv_tensors.Mask) else 0


class RandomScaleCrop(v2.Transform):
    """Resize by a random factor, then take a window of a fixed size at a random place.

    The window is ``size``, or the item's own size when ``size`` is ``None``; where the resized image
    is smaller than it, the image lands at a random place in it and the rest is filled (0 in images,
    ``mask_fill`` in masks). Images are resized bilinearly (antialiased), masks nearest-neighbour
    (``NEAREST_EXACT``: pixel centres, as the image's grid; plain ``NEAREST`` shifts them by up to half
    a source pixel), boxes are scaled, shifted and clamped.

    Args:
        scale: ``(low, high)`` resize factors, or ``None`` (crop / pad only).
        size: ``(H, W)`` of the output, or ``None`` (the input's).
        mask_fill: mask value for pixels from outside the image.
    """

    def __init__(self, scale: tuple[float, float] | None = None, size: tuple[int, int] | None = None,
                 mask_fill: int = 0) -> None:
        super().__init__()
        self.scale, self.size, self.mask_fill = scale, size, mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        factor = 1.0
        if self.scale is not None:
            low, high = self.scale
            factor = low + float(torch.rand(())) * (high - low)
        resized = (max(1, round(height * factor)), max(1, round(width * factor)))
        out = self.size or (height, width)
        # offset of the window in the resized image: negative where the image is smaller (it is padded)
        offset = [int(torch.randint(min(0, r - o), max(0, r - o) + 1, ())) for r, o in zip(resized, out)]
        return {"resized": resized, "top": offset[0], "left": offset[1], "out": out,
                "changed": resized != (height, width)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["changed"]:  # masks: the nearest pixel centre, on the same grid as the image's bilinear
            mode = v2.InterpolationMode.NEAREST_EXACT if isinstance(inpt, tv_tensors.Mask) else \
                v2.InterpolationMode.BILINEAR
            inpt = F.resize(inpt, list(params["resized"]), interpolation=mode, antialias=True)
        return crop_or_pad(inpt, params["top"], params["left"], params["out"], _fill(inpt, self.mask_fill))


def crop_or_pad(inpt: Any, top: int, left: int, size: tuple[int, int], fill: int) -> Any:
    """The ``size`` window of ``inpt`` (image ``(C, H, W)``, mask ``(H, W)`` or boxes) whose corner is at
    ``(top, left)``; negative offsets or a window past the edge are filled with ``fill``."""
    height, width = F.get_size(inpt)
    pad = [max(0, -left), max(0, -top), max(0, left + size[1] - width), max(0, top + size[0] - height)]
    if any(pad):  # [left, top, right, bottom]
        inpt = F.pad(inpt, pad, fill=fill)
    return F.crop(inpt, max(0, top), max(0, left), size[0], size[1])


class ResizeTo(v2.Transform):
    """Resize every image, mask and box of a sample to ``size`` ``(H, W)``: images bilinearly (antialiased),
    masks ``NEAREST_EXACT`` (as `RandomScaleCrop`), boxes scaled."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = list(size)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if tuple(F.get_size(inpt)) == tuple(self.size):
            return inpt
        mode = v2.InterpolationMode.NEAREST_EXACT if isinstance(inpt, tv_tensors.Mask) else \
            v2.InterpolationMode.BILINEAR
        return F.resize(inpt, self.size, interpolation=mode, antialias=True)


class RandomIoUCropResized(v2.Transform):
    """With probability ``p``, torchvision's ``v2.RandomIoUCrop`` (a random window in which some box keeps
    at least a random IoU with it, or no crop; boxes whose centre falls outside are zeroed, for
    `SanitizeBoxes` to drop with their labels and masks), then resized back to the item's size.

    Args:
        p: probability of the crop.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p, self.crop = p, v2.RandomIoUCrop()

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        if float(torch.rand(())) >= self.p:
            return sample
        leaves = tree_flatten(sample)[0]
        size = v2.query_size([x for x in leaves if isinstance(x, tv_tensors.TVTensor)] or leaves)  # not labels
        return ResizeTo(size)(self.crop(sample))


class SanitizeBoxes(v2.SanitizeBoundingBoxes):
    """`v2.SanitizeBoundingBoxes` (drops boxes under 1 pixel or outside the image, with their
    ``labels``) that passes a sample without boxes through, and never indexes a class map ``(H, W)``
    (torchvision's would when ``H`` equals the number of boxes); instance masks ``(N, H, W)`` follow."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        if not any(isinstance(x, tv_tensors.BoundingBoxes) for x in tree_flatten(sample)[0]):
            return sample
        return super().forward(*inputs)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask) and inpt.ndim < 3:
            return inpt
        return super().transform(inpt, params)


def augment_pipeline(augment: str | Mapping[str, Any] | None = "none", crop_size: tuple[int, int] | None = None,
                     mask_fill: int = 0, in_channels: int = 3, where: str = "data.augment",
                     detection: bool = False) -> v2.Compose:
    """The training pipeline of ``augment`` (see `parse_augment`) and ``crop_size``.

    Called on a sample ``{"image": tv_tensors.Image (C, H, W) float in [0, 1], "mask": tv_tensors.Mask
    (H, W), ["boxes": tv_tensors.BoundingBoxes (N, 4), "labels": (N,)], ...}`` (any structure v2 takes),
    it returns the same structure: flips, rotation, scale jitter and the random ``crop_size`` window
    move every image, mask and box together; colour jitter touches the image only; boxes are then
    clamped to the image and those left degenerate or outside are dropped with their labels (and their
    instance masks ``(N, H, W)``, when the sample holds them). ``iou_crop`` runs first; ``mosaic`` is
    not part of this pipeline (the dataset factory wraps the training split in `MosaicDataset`).

    Args:
        augment: the spec's ``augment`` value.
        crop_size: ``(H, W)`` of a random window every item is cut to (padded where the image is
            smaller), or ``None`` (items keep their size).
        mask_fill: mask value of pixels from outside the image (``ignore_index``, else 0).
        in_channels: image channels (colour jitter needs 1 or 3).
        where: the key path named in errors.
        detection: the samples hold boxes (``iou_crop`` and ``mosaic`` are allowed).
    """
    steps = parse_augment(augment, where)
    for key in DETECTION_STEPS:
        if getattr(steps, key) and not detection:
            raise SpecError(f"{where}.{key} needs boxes, and this dataset gives none; it is for detection data "
                            f"(coco, scenes). Remove {where}.{key}")
    if steps.color and in_channels not in (1, 3):
        raise SpecError(f"{where}.color jitters 1- or 3-channel images, but the images have {in_channels} "
                        f"channels; remove {where}.color")
    fills = {tv_tensors.Image: 0, tv_tensors.Mask: mask_fill}
    pipeline: list[Any] = []
    if steps.iou_crop:
        pipeline.append(RandomIoUCropResized(steps.iou_crop))
    if steps.hflip:
        pipeline.append(v2.RandomHorizontalFlip(steps.hflip))
    if steps.vflip:
        pipeline.append(v2.RandomVerticalFlip(steps.vflip))
    if steps.rotate:
        pipeline.append(v2.RandomRotation(steps.rotate, interpolation=v2.InterpolationMode.BILINEAR, fill=fills))
    if steps.scale or crop_size:
        pipeline.append(RandomScaleCrop(steps.scale, crop_size, mask_fill))
    if steps.color:
        c = steps.color
        pipeline.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c if in_channels == 3 else 0))
    pipeline += [v2.ClampBoundingBoxes(), SanitizeBoxes()]
    return v2.Compose(pipeline)


class PadCollate:
    """Batch ``(image (C, H, W), {"mask": (H, W), ...})`` items of different sizes: each image padded
    at the bottom / right to the batch's largest ``(H, W)`` with 0, each mask with ``mask_fill`` (the
    ignore value, so padding counts in no loss or metric); other targets stacked. Same-size items are
    stacked as they are. A picklable object, so DataLoader workers can take it.

    Args:
        mask_fill: mask value of padded pixels, or ``None`` (then items of different sizes are an error).
    """

    def __init__(self, mask_fill: int | None) -> None:
        self.mask_fill = mask_fill

    def __call__(self, items: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, dict]:
        sizes = {tuple(image.shape[-2:]) for image, _ in items}
        if len(sizes) > 1 and self.mask_fill is None:
            raise ValueError(f"a batch holds images of sizes {sorted(sizes)} and no mask value to pad them with; "
                             "set data.ignore_index, or data.image_size to resize every image to one size")
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
        images, targets = [], {key: [] for key in items[0][1]}
        for image, target in items:
            pad = (0, width - image.shape[-1], 0, height - image.shape[-2])  # (left, right, top, bottom)
            images.append(torch.nn.functional.pad(image, pad))  # (C, H_max, W_max)
            for key, value in target.items():
                if key == "mask":
                    value = torch.nn.functional.pad(value, pad, value=float(self.mask_fill or 0))  # (H_max, W_max)
                targets[key].append(value)
        return torch.stack(images), {key: torch.stack(values) for key, values in targets.items()}
