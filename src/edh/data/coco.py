"""``coco``: a user's detection data as COCO JSON (an images folder + an annotations file).

Categories become labels ``1..K`` in the order of their ids (0 stays background, torchvision's
convention); the original ids are kept in ``DataInfo.extra["category_ids"]`` so predictions are
written back with them.

The file is read and checked by `edh.data.coco_json` (what is refused, skipped or counted is listed
there). Images keep their own size unless ``image_size`` is given (no silent resizing); a batch of images
of different sizes is padded at the bottom and right to the largest (`collate_detection`).

With ``masks: true`` each item also holds the instance masks of its boxes, ``masks`` ``(N, H, W)``
uint8, decoded from the annotations' ``segmentation`` (polygons or RLE, `edh.data.coco_masks`) when the
item is loaded. ``augment`` (training split only) moves image, boxes and masks together
(`edh.data.augment`); ``augment.mosaic`` tiles four training images into one (`edh.data.mosaic`).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from edh.core.registry import register_dataset
from edh.data.base import DataBundle, DataInfo, split_indices
from edh.data.coco_json import CocoAnnotationError, CocoImage, CocoImageSizeError, CocoIssue, read_coco
from edh.data.coco_masks import decode_masks

log = logging.getLogger("edh")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CocoDataset(Dataset):
    """Items ``(image (C, H, W) normalised, {"boxes": (N, 4), "labels": (N,), "image_id": int64, ["masks": (N, H, W)
    uint8]})``.

    With ``image_size`` the image is resized to ``image_size`` x ``image_size`` (bilinear), its boxes scaled
    and its masks resized (``nearest-exact``: pixel centres, the image's grid).

    Args:
        images: the split's images (`read_coco`).
        in_channels: channels images are read as.
        mean, std: per-channel normalisation of the [0, 1] image.
        image_size: side of the square every image is resized to, or ``None``.
        masks: give ``masks`` (the images hold ``segmentations``).
        augment: a joint pipeline (`edh.data.augment.augment_pipeline`) run on the [0, 1] image, boxes,
            labels and masks before normalisation, or ``None``.
    """

    def __init__(self, images: list[CocoImage], in_channels: int, mean: tuple[float, ...], std: tuple[float, ...],
                 image_size: int | None = None, masks: bool = False, augment: Any = None) -> None:
        self.images, self.in_channels, self.image_size = images, in_channels, image_size
        self.masks, self.augment = masks, augment
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from edh.data.files import read_image

        item = self.images[index]
        image = read_image(item.path, self.in_channels)  # (C, H, W) in [0, 1]
        if item.size is not None and (float(image.shape[-1]), float(image.shape[-2])) != item.size:
            raise CocoImageSizeError(
                f"image {item.path} is {image.shape[-1]}x{image.shape[-2]} pixels (read upright: EXIF orientation "
                f"applied), but {item.source or 'its COCO file'} gives image {item.image_id} width {item.size[0]:g} "
                f"and height {item.size[1]:g}: its boxes were checked against the wrong size. Fix width / height "
                "there (or remove them: edh then reads them from the image file)")
        boxes, labels = item.boxes.clone(), item.labels.clone()
        masks = decode_masks(item.segmentations or [], *image.shape[-2:]) if self.masks else None  # (N, H, W)
        if self.image_size:
            height, width = image.shape[-2:]
            size = (self.image_size, self.image_size)
            image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            scale = torch.tensor([self.image_size / width, self.image_size / height] * 2)
            boxes = boxes * scale
            if masks is not None:
                masks = F.interpolate(masks[None], size=size, mode="nearest-exact")[0] if len(masks) else \
                    masks.new_zeros((0, *size))
        if self.augment is not None:
            image, boxes, labels, masks = self._augmented(image, boxes, labels, masks)
        image = (image - self.mean) / self.std
        targets = {"boxes": boxes, "labels": labels, "image_id": torch.tensor(item.image_id)}
        if masks is not None:
            targets["masks"] = masks
        return image, targets

    def _augmented(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                   masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``augment`` on the [0, 1] image, its boxes, labels and masks; boxes left empty are dropped with
        their labels and masks."""
        from torchvision import tv_tensors

        sample = {"image": tv_tensors.Image(image), "labels": labels,
                  "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))}
        if masks is not None:
            sample["masks"] = tv_tensors.Mask(masks)
        out = self.augment(sample)
        plain = lambda key: out[key].as_subclass(torch.Tensor)  # noqa: E731
        return plain("image"), plain("boxes"), out["labels"], plain("masks") if masks is not None else None


def collate_detection(items: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Batch detection items: images padded (bottom / right, with 0 = the mean colour) to the largest
    ``(H, W)`` and stacked; ``boxes``, ``labels`` and ``masks`` lists of per-image tensors, each ``masks``
    ``(N_i, H, W)`` padded like its image (with 0); other targets stacked."""
    height = max(image.shape[-2] for image, _ in items)
    width = max(image.shape[-1] for image, _ in items)
    pad = lambda x: F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))  # noqa: E731  (bottom / right)
    images = torch.stack([pad(image) for image, _ in items])
    targets: dict[str, Any] = {}
    for key in items[0][1]:
        values = [t[key] for _, t in items]
        if key == "masks":
            values = [pad(masks) for masks in values]  # (N_i, H, W)
        targets[key] = values if key in ("boxes", "labels", "masks") else torch.stack(values)
    return images, targets


def report_issues(issues: list[CocoIssue], source: Path, strict: bool) -> dict[str, int]:
    """Raise (``strict``) or log a warning about bad annotations; return counts per kind."""
    if not issues:
        return {}
    kinds = Counter(issue.kind or issue.reason for issue in issues)
    summary = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    listed = "\n".join(f"  {issue}" for issue in issues[:20])
    more = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
    what = "bad annotations" if any(i.annotation_id is not None for i in issues) else "missing images"
    if strict:
        raise CocoAnnotationError(f"{source}: {len(issues)} {what} ({summary}):\n{listed}{more}\n"
                                  "Fix them, or set data.strict: false to skip them (they are counted and logged).")
    log.warning("%s: skipped %d %s (%s):\n%s%s", source, len(issues), what, summary, listed, more)
    return dict(kinds)


def count_boxes(images: list[CocoImage]) -> int:
    return sum(len(image.boxes) for image in images)


@register_dataset("coco")
def coco(images: str, annotations: str, val_images: str | None = None, val_annotations: str | None = None,
         val_fraction: float = 0.1, test_fraction: float = 0.1, in_channels: int = 3,
         mean: list[float] | None = None, std: list[float] | None = None, image_size: int | None = None,
         masks: bool = False, augment: str | dict[str, Any] = "none", strict: bool = False,
         seed: int = 0) -> DataBundle:
    """A COCO detection set (see the module docstring).

    Args:
        images: folder of the images named in ``annotations``.
        annotations: COCO JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``).
        val_images, val_annotations: a separate validation set (e.g. COCO's val2017), used for
            validation and test; without it, ``val_fraction`` / ``test_fraction`` of the images are
            held out (split by ``seed``).
        in_channels: channels images are read as (1, 3 or 4).
        mean, std: normalisation (default ImageNet's for RGB).
        image_size: resize every image to this square size (boxes scaled, masks resized); default: keep sizes.
        masks: items also hold ``masks`` ``(N, H, W)`` uint8, the instance mask of each box, from its
            ``segmentation`` (polygons, uncompressed or compressed RLE); an annotation without a usable one
            is a bad annotation (skipped, or refused with ``strict``).
        augment: training augmentation (`edh.data.augment.parse_augment`): ``none`` (default), ``flip`` or a
            mapping of steps (``{hflip: 0.5, scale: [0.5, 1.5], color: 0.2, iou_crop: 0.3, mosaic: 0.5}``);
            image, boxes and masks move together and boxes left empty are dropped with their labels and
            masks. Validation and test: never.
        strict: refuse annotation files with bad annotations (an error lists them) instead of
            skipping them.
    """
    from edh.data.augment import augment_pipeline, parse_augment
    from edh.data.mosaic import MosaicDataset

    steps = parse_augment(augment)  # a bad augment is refused before any file is read
    train_augment = augment_pipeline(augment, None, 0, in_channels, detection=True) if steps.active else None
    found = read_coco(annotations, images, masks=masks)
    skipped = report_issues(found.issues, Path(annotations), strict)
    ignored = Counter(found.ignored)
    categories = sorted(found.label_of)
    files = [str(Path(annotations).resolve())]
    if not count_boxes(found.images):
        raise CocoAnnotationError(
            f"{annotations}: no box to train on: {found.annotations} annotations, {len(found.issues)} skipped as bad, "
            f"{found.ignored['crowd']} crowd (left out), {len(found.images)} images. A detector's training set needs "
            "boxes; fix the annotations (see the warnings above)")
    if val_annotations:
        held_out = read_coco(val_annotations, val_images or images, found.label_of, training=False, masks=masks)
        for kind, count in report_issues(held_out.issues, Path(val_annotations), strict).items():
            skipped[kind] = skipped.get(kind, 0) + count
        ignored.update(held_out.ignored)
        files.append(str(Path(val_annotations).resolve()))
        train, val, test = found.images, held_out.images, held_out.images
    else:
        train_idx, val_idx, test_idx = split_indices(len(found.images), val_fraction, test_fraction, seed)
        train, val, test = ([found.images[i] for i in idx] for idx in (train_idx, val_idx, test_idx))
        if not train:
            raise CocoAnnotationError(f"the training split of {annotations} is empty ({len(found.images)} images, "
                                      f"val_fraction {val_fraction}, test_fraction {test_fraction}); lower them")
        if not count_boxes(train):
            raise CocoAnnotationError(
                f"the training split of {annotations} ({len(train)} of {len(found.images)} images, split by seed "
                f"{seed}) holds no box; the {count_boxes(found.images)} boxes all went to val / test. Lower "
                "data.val_fraction / test_fraction, change data.seed, or annotate more images")
    empty = {split: sum(len(image.boxes) == 0 for image in part) for split, part in
             (("train", train), ("val", val), ("test", test))}
    if any(empty.values()):
        log.info("%s: images without boxes (kept: they show what is not an object): %s", annotations,
                 ", ".join(f"{split} {n} of {len(part)}" for (split, n), part in zip(empty.items(), (train, val, test))))
    if ignored:
        log.info("%s: left out %d crowd annotations (iscrowd: 1)", annotations, ignored["crowd"])
    class_names = [found.names[k] for k in range(1, len(categories) + 1)]
    mean = tuple(mean or (IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels))
    std = tuple(std or (IMAGENET_STD if in_channels == 3 else (0.25,) * in_channels))
    size = (image_size, image_size) if image_size else None
    defaults = {"num_classes": len(class_names), "class_names": class_names, "category_ids": categories}
    targets = {"boxes": "detection", "labels": "detection", **({"masks": "instance_segmentation"} if masks else {})}
    info = DataInfo("image", in_channels, size, mean, std, class_names, targets,
                    {"dataset": "coco", "category_ids": categories, "coco_annotations": files,
                     "coco_skipped": skipped, "coco_ignored": dict(ignored), "coco_images_without_boxes": empty,
                     "head_defaults": {"boxes": defaults}})
    part = lambda found: CocoDataset(found, in_channels, mean, std, image_size, masks)  # noqa: E731
    train_set = CocoDataset(train, in_channels, mean, std, image_size, masks, train_augment)
    if steps.mosaic:
        train_set = MosaicDataset(train_set, steps.mosaic)
    return DataBundle(train_set, part(val), part(test), info, collate_fn=collate_detection)
