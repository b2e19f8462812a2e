"""``coco``: a user's detection data as COCO JSON (an images folder + an annotations file).

The annotations are read with pycocotools. Categories become labels ``1..K`` in the order of
their ids (0 stays background, torchvision's convention); the original ids are kept in
``DataInfo.extra["category_ids"]`` so predictions are written back with them.

Bad annotations are never kept silently. Each one is reported with its annotation id and why:
a malformed ``bbox``, zero or negative width or height, a box outside its image, an unknown
category id, an unknown image id, or a missing image file. By default they are skipped (a warning
gives the count per reason and the first ids; ``DataInfo.extra["coco_skipped"]`` keeps the
counts); with ``strict: true`` loading stops with an error listing them. Crowd annotations
(``iscrowd: 1``) are left out of training, as usual for box detectors, and counted.

Images keep their own size unless ``image_size`` is given (no silent resizing); a batch of images
of different sizes is padded at the bottom and right to the largest (`collate_detection`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from edh.data.base import DataBundle, DataFilesMissingError, DataInfo, split_indices
from edh.core.registry import register_dataset

log = logging.getLogger("edh")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CocoAnnotationError(ValueError):
    """Bad annotations found with ``strict: true``; the message lists them by annotation id."""


@dataclass
class CocoImage:
    """One image and its kept boxes ``(N, 4)`` xyxy and labels ``(N,)`` (1..K)."""

    path: Path
    image_id: int
    boxes: torch.Tensor
    labels: torch.Tensor


@dataclass
class CocoIssue:
    annotation_id: Any
    image_id: Any
    reason: str

    def __str__(self) -> str:
        return f"annotation {self.annotation_id} (image {self.image_id}): {self.reason}"


def _read_annotations(path: Path):
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DataFilesMissingError(f"COCO annotation file {path} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(path))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a COCO annotation file (images / annotations / categories): {error}") from None


def _check_box(bbox: Any, width: float, height: float) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return f"malformed bbox {bbox!r} (expected [x, y, width, height])"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"zero or negative width or height (bbox {list(bbox)})"
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return f"box {list(bbox)} lies outside its {width:g}x{height:g} image"
    return None


@dataclass
class CocoRead:
    """What `read_coco` found.

    Attributes:
        images: images whose file exists, with only their valid, non-crowd boxes.
        issues: every bad annotation.
        ignored: counts of annotations left out on purpose (``crowd``).
        names: label -> category name.
        label_of: category id -> label.
    """

    images: list[CocoImage]
    issues: list[CocoIssue]
    ignored: Counter
    names: dict[int, str]
    label_of: dict[int, int]


def read_coco(annotations: str | Path, images: str | Path, label_of: dict[int, int] | None = None) -> CocoRead:
    """The images of a COCO file with their valid boxes, and every bad annotation.

    Args:
        annotations: the COCO JSON file.
        images: the folder the ``file_name`` of each image is relative to.
        label_of: category id -> label (default: this file's categories in id order, 1..K).
    """
    annotations, folder = Path(annotations), Path(images)
    if not folder.is_dir():
        raise DataFilesMissingError(f"COCO images folder {folder} does not exist")
    coco = _read_annotations(annotations)
    categories = {int(c["id"]): c.get("name", str(c["id"])) for c in coco.dataset.get("categories", [])}
    if not categories:
        raise ValueError(f"{annotations} lists no categories; a detector needs at least one")
    if label_of is None:
        label_of = {cid: k + 1 for k, cid in enumerate(sorted(categories))}
    names = {label_of[c]: n for c, n in categories.items() if c in label_of}
    issues: list[CocoIssue] = []
    ignored: Counter = Counter()
    kept: dict[int, tuple[list, list]] = {}
    missing_files: set[int] = set()
    for image_id, image in coco.imgs.items():
        if not (folder / str(image.get("file_name", ""))).is_file():
            missing_files.add(image_id)
    for ann in coco.dataset.get("annotations", []):
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        image = coco.imgs.get(image_id)
        if image is None:
            issues.append(CocoIssue(ann_id, image_id, "unknown image id"))
            continue
        if image_id in missing_files:
            issues.append(CocoIssue(ann_id, image_id, f"image file {folder / str(image.get('file_name'))} is missing"))
            continue
        if ann.get("category_id") not in label_of:
            issues.append(CocoIssue(ann_id, image_id, f"unknown category id {ann.get('category_id')!r}"))
            continue
        problem = _check_box(ann.get("bbox"), float(image.get("width", 0)), float(image.get("height", 0)))
        if problem:
            issues.append(CocoIssue(ann_id, image_id, problem))
            continue
        if ann.get("iscrowd", 0):
            ignored["crowd"] += 1
            continue
        x, y, w, h = ann["bbox"]
        boxes, labels = kept.setdefault(image_id, ([], []))
        boxes.append([x, y, x + w, y + h])
        labels.append(label_of[ann["category_id"]])
    found = []
    for image_id in sorted(coco.imgs):
        if image_id in missing_files:
            continue
        boxes, labels = kept.get(image_id, ([], []))
        found.append(CocoImage(folder / str(coco.imgs[image_id]["file_name"]), int(image_id),
                               torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                               torch.tensor(labels, dtype=torch.int64)))
    return CocoRead(found, issues, ignored, names, label_of)


def report_issues(issues: list[CocoIssue], source: Path, strict: bool) -> dict[str, int]:
    """Raise (``strict``) or log a warning about bad annotations; return counts per reason."""
    if not issues:
        return {}
    kinds = Counter(_reason_kind(i.reason) for i in issues)
    summary = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    listed = "\n".join(f"  {issue}" for issue in issues[:20])
    more = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
    if strict:
        raise CocoAnnotationError(f"{source}: {len(issues)} bad annotations ({summary}):\n{listed}{more}\n"
                                  "Fix them, or set data.strict: false to skip them (they are counted and logged).")
    log.warning("%s: skipped %d bad annotations (%s):\n%s%s", source, len(issues), summary, listed, more)
    return dict(kinds)


def _reason_kind(reason: str) -> str:
    for kind in ("malformed bbox", "zero or negative", "outside", "unknown category", "unknown image", "missing"):
        if kind in reason:
            return {"zero or negative": "degenerate box", "outside": "box outside image",
                    "missing": "missing image file"}.get(kind, kind)
    return reason


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
    if val_annotations:
        held_out = read_coco(val_annotations, val_images or images, found.label_of)
        for kind, count in report_issues(held_out.issues, Path(val_annotations), strict).items():
            skipped[kind] = skipped.get(kind, 0) + count
        ignored.update(held_out.ignored)
        files.append(str(Path(val_annotations).resolve()))
        train, val, test = found.images, held_out.images, held_out.images
    else:
        train_idx, val_idx, test_idx = split_indices(len(found.images), val_fraction, test_fraction, seed)
        train, val, test = ([found.images[i] for i in idx] for idx in (train_idx, val_idx, test_idx))
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
                     "coco_skipped": skipped, "coco_ignored": dict(ignored), "head_defaults": {"boxes": defaults}})
    part = lambda found: CocoDataset(found, in_channels, mean, std, image_size)  # noqa: E731
    return DataBundle(part(train), part(val), part(test), info, collate_fn=collate_detection)
