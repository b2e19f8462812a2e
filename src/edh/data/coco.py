"""``coco``: a user's detection data as COCO JSON (an images folder + an annotations file).

Categories become labels ``1..K`` in the order of their ids (0 stays background, torchvision's
convention); the original ids are kept in ``DataInfo.extra["category_ids"]`` so predictions are
written back with them.

The file is read and checked by `edh.data.coco_json` (what is refused, skipped or counted is listed
there). Images keep their own size unless ``image_size`` is given (no silent resizing); a batch of images
of different sizes is padded at the bottom and right to the largest (`collate_detection`).
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
from edh.data.coco_json import (CocoAnnotationError, CocoImage, CocoImageSizeError, count_boxes, read_coco,
                                report_issues)

log = logging.getLogger("edh")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CocoDataset(Dataset):
    """Items ``(image (C, H, W) normalised, {"boxes": (N, 4), "labels": (N,), "image_id": int64})``.

    With ``image_size`` the image is resized to ``image_size`` x ``image_size`` and its boxes scaled.
    """

    def __init__(self, images: list[CocoImage], in_channels: int, mean: tuple[float, ...], std: tuple[float, ...],
                 image_size: int | None = None) -> None:
        self.images, self.in_channels, self.image_size = images, in_channels, image_size
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
        boxes = item.boxes.clone()
        if self.image_size:
            height, width = image.shape[-2:]
            image = F.interpolate(image[None], size=(self.image_size, self.image_size), mode="bilinear",
                                  antialias=True, align_corners=False)[0]
            scale = torch.tensor([self.image_size / width, self.image_size / height] * 2)
            boxes = boxes * scale
        image = (image - self.mean) / self.std
        return image, {"boxes": boxes, "labels": item.labels.clone(), "image_id": torch.tensor(item.image_id)}


def collate_detection(items: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Batch detection items: images padded (bottom / right, with 0 = the mean colour) to the largest
    ``(H, W)`` and stacked; ``boxes`` and ``labels`` lists of per-image tensors; other targets stacked."""
    height = max(image.shape[-2] for image, _ in items)
    width = max(image.shape[-1] for image, _ in items)
    images = torch.stack([F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))
                          for image, _ in items])
    targets: dict[str, Any] = {}
    for key in items[0][1]:
        values = [t[key] for _, t in items]
        targets[key] = values if key in ("boxes", "labels") else torch.stack(values)
    return images, targets


@register_dataset("coco")
def coco(images: str, annotations: str, val_images: str | None = None, val_annotations: str | None = None,
         val_fraction: float = 0.1, test_fraction: float = 0.1, in_channels: int = 3,
         mean: list[float] | None = None, std: list[float] | None = None, image_size: int | None = None,
         strict: bool = False, seed: int = 0) -> DataBundle:
    """A COCO detection set (see the module docstring).

    Args:
        images: folder of the images named in ``annotations``.
        annotations: COCO JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``).
        val_images, val_annotations: a separate validation set (e.g. COCO's val2017), used for
            validation and test; without it, ``val_fraction`` / ``test_fraction`` of the images are
            held out (split by ``seed``).
        in_channels: channels images are read as (1, 3 or 4).
        mean, std: normalisation (default ImageNet's for RGB).
        image_size: resize every image to this square size (boxes scaled); default: keep sizes.
        strict: refuse annotation files with bad annotations (an error lists them) instead of
            skipping them.
    """
    found = read_coco(annotations, images)
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
        held_out = read_coco(val_annotations, val_images or images, found.label_of, training=False)
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
    info = DataInfo("image", in_channels, size, mean, std, class_names,
                    {"boxes": "detection", "labels": "detection"},
                    {"dataset": "coco", "category_ids": categories, "coco_annotations": files,
                     "coco_skipped": skipped, "coco_ignored": dict(ignored), "coco_images_without_boxes": empty,
                     "head_defaults": {"boxes": defaults}})
    part = lambda found: CocoDataset(found, in_channels, mean, std, image_size)  # noqa: E731
    return DataBundle(part(train), part(val), part(test), info, collate_fn=collate_detection)
