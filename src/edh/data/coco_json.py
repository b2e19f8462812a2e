"""Reading and checking a COCO annotation file: images, categories and boxes, with what cannot be used
named.

The file is checked before anything trains; what cannot be used is refused or reported, never kept
silently, and every message names the file, the annotation id and the image (id and file name).

* Refused (a `CocoAnnotationError`, whatever ``strict`` says): a file that is not JSON (UTF-8, or
  UTF-16 / UTF-32 with a byte-order mark), a top level that is not an object, ``images`` or
  ``categories`` missing, empty or not lists, a training file without ``annotations`` (an empty list
  says "no objects" explicitly); an entry that is not an object; an image, category or annotation
  id that is not an integer (booleans included) or is used twice (naming both entries: a duplicate
  image id would move boxes to the other image); an image without a ``file_name``, or a file
  listed twice; a ``width`` / ``height`` that is not a positive finite number (NaN, Inf, 0,
  ``true``, ``"640"``); a category ``name`` that is not a string. An image without ``width`` /
  ``height`` gets them from its file's header. A training set left with no box to learn from (all
  skipped, or none in the training split) is refused; so is a file none of whose images exist.
* Bad annotations, skipped by default (a warning gives the count per reason and the first ones;
  ``DataInfo.extra["coco_skipped"]`` keeps the counts) or, with ``strict: true``, an error listing
  them: a malformed ``bbox`` (not 4 numbers, booleans, NaN / Inf), zero or negative width or height,
  a box outside its image, an unknown or non-integer category id or image id, a missing image file,
  an ``iscrowd`` other than 0 / 1. An image whose file is missing is left out (and reported even
  when it has no annotations). With ``masks`` (``data.masks: true``), also an annotation whose
  ``segmentation`` is missing, malformed or outside its image (`edh.data.coco_masks.check_segmentation`).
* Left out on purpose and counted: crowd annotations (``iscrowd: 1``), as usual for box detectors
  (``extra["coco_ignored"]``). Images without boxes are kept (they teach what is not an object);
  their number is logged and kept in ``extra["coco_images_without_boxes"]``.
* When an image is read, its real size (upright: EXIF orientation applied, as `read_image` reads
  it) must be the ``width`` / ``height`` the file gives (the boxes were checked against them);
  otherwise a `CocoImageSizeError` names the image.

Keys edh does not use (``area``, ``info``, ``licenses``..., and ``segmentation`` unless ``masks``) are not
checked.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edh.core.errors import DataError, DataItemError, EdhError
from edh.data.base import DataFilesMissingError
from edh.data.coco_masks import check_segmentation
from edh.data.json_values import is_int, is_number, short, type_name

log = logging.getLogger("edh")


class CocoAnnotationError(DataError):
    """A COCO file edh cannot use, or bad annotations found with ``strict: true``; the message names
    the file, the annotation and image ids and the image files."""


class CocoFilesMissingError(DataFilesMissingError, EdhError):
    """The annotation file or the images folder of a COCO dataset is not there."""


class CocoImageSizeError(CocoAnnotationError, DataItemError):
    """An image whose size (read upright) is not the ``width`` / ``height`` its COCO file gives (raised when
    the image is loaded; its message survives a DataLoader worker)."""


@dataclass
class CocoImage:
    """One image and its kept boxes ``(N, 4)`` xyxy and labels ``(N,)`` (1..K).

    ``size`` is the ``(width, height)`` the annotation file gives (``None``: read from the file);
    ``source`` the annotation file (for messages); ``segmentations`` the checked ``segmentation`` of each
    box (read with ``masks``; decoded when the item is loaded), else ``None``.
    """

    path: Path
    image_id: int
    boxes: torch.Tensor
    labels: torch.Tensor
    size: tuple[float, float] | None = None
    source: str = ""
    segmentations: list | None = None


@dataclass
class CocoIssue:
    """A bad annotation (or an image whose file is missing: ``annotation_id`` is ``None``)."""

    annotation_id: Any
    image_id: Any
    reason: str
    kind: str = ""
    file: str | None = None

    def __str__(self) -> str:
        where = f"image {self.image_id!r}" + (f", {self.file}" if self.file else "")
        if self.annotation_id is None:
            return f"{where}: {self.reason}"
        return f"annotation {self.annotation_id} ({where}): {self.reason}"


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """A COCO file's top-level JSON object (UTF-8, a byte-order mark allowed, or UTF-16 / UTF-32 with one).

    Raises:
        CocoFilesMissingError: no such file, or a folder.
        CocoAnnotationError: not text, not JSON, or not a JSON object (the message names the file and where).
    """
    from edh.data.textfiles import TextEncodingError, decode_text

    path = Path(path)
    if path.is_dir():
        raise CocoFilesMissingError(f"COCO annotation file {path} is a folder; data.annotations must name the "
                                    "JSON file (e.g. annotations/instances_train2017.json)")
    if not path.is_file():
        raise CocoFilesMissingError(f"COCO annotation file {path} does not exist")
    try:
        text = decode_text(path.read_bytes(), path).text
    except TextEncodingError as error:
        raise CocoAnnotationError(f"{error} (JSON is UTF-8)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CocoAnnotationError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column "
                                  f"{error.colno}; a COCO annotation file is one JSON object with images, "
                                  "annotations and categories") from None
    except RecursionError:
        raise CocoAnnotationError(f"{path} is not a COCO annotation file: its JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise CocoAnnotationError(f"{path} is not a COCO annotation file: its JSON is {type_name(data)}, not an "
                                  "object with images, annotations and categories")
    return data


def _entries(data: dict[str, Any], key: str, path: Path, required: bool = True) -> list | None:
    if key not in data:
        if required:
            raise CocoAnnotationError(f"{path} has no {key!r} list; a COCO annotation file has images, annotations "
                                      "and categories")
        return None
    entries = data[key]
    if not isinstance(entries, list):
        raise CocoAnnotationError(f"{path}: {key!r} is {type_name(entries)}, not a list")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CocoAnnotationError(f"{path}: {key}[{index}] is {type_name(entry)} ({short(entry)}), not an object")
    return entries


def _read_categories(data: dict[str, Any], path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    where: dict[int, int] = {}
    for index, category in enumerate(_entries(data, "categories", path) or []):
        cid, name = category.get("id"), category.get("name")
        if not is_int(cid):
            raise CocoAnnotationError(f"{path}: categories[{index}] (name {short(name)}) has id {short(cid)}; a "
                                      "category id must be an integer")
        if name is None:
            name = str(cid)
        elif not isinstance(name, str):
            raise CocoAnnotationError(f"{path}: category {cid} (categories[{index}]) has name {short(name)}; a "
                                      "category name must be a string")
        if cid in categories:
            raise CocoAnnotationError(f"{path}: category id {cid} is used twice: {categories[cid]!r} "
                                      f"(categories[{where[cid]}]) and {name!r} (categories[{index}]); give each "
                                      "category its own id")
        categories[cid], where[cid] = name, index
    if not categories:
        raise CocoAnnotationError(f"{path} lists no categories; a detector needs at least one")
    return categories


def _size_from_file(file: Path, image_id: int, path: Path) -> tuple[float, float]:
    from edh.data.files import upright_size

    try:
        height, width = upright_size(file)  # as read_image gives it: EXIF orientation applied
    except Exception as error:  # PIL raises many types for a file that is not an image
        raise CocoAnnotationError(f"{path}: image {image_id} ({file}) has no width / height, and they cannot be read "
                                  f"from the file: {error}. Fix or replace the image, or give its width and "
                                  "height") from None
    if width <= 0 or height <= 0:
        raise CocoAnnotationError(f"{path}: image {image_id} ({file}) is {width}x{height} pixels (empty)")
    return float(width), float(height)


@dataclass
class _ImageEntry:
    image_id: int
    file_name: str
    file: Path
    exists: bool
    size: tuple[float, float] | None  # (width, height), declared or read from the file
    declared: bool


def _read_images(data: dict[str, Any], path: Path, folder: Path) -> dict[int, _ImageEntry]:
    images: dict[int, _ImageEntry] = {}
    where: dict[int, int] = {}
    by_file: dict[str, int] = {}
    entries = _entries(data, "images", path) or []
    if not entries:
        raise CocoAnnotationError(f"{path} lists no images")
    for index, image in enumerate(entries):
        iid, file_name = image.get("id"), image.get("file_name")
        if not is_int(iid):
            raise CocoAnnotationError(f"{path}: images[{index}] (file_name {short(file_name)}) has id {short(iid)}; "
                                      "an image id must be an integer")
        if not isinstance(file_name, str) or not file_name.strip():
            raise CocoAnnotationError(f"{path}: image {iid} (images[{index}]) has file_name {short(file_name)}; it "
                                      f"must name its file, relative to the images folder {folder}")
        if iid in images:
            raise CocoAnnotationError(
                f"{path}: image id {iid} is used twice: {images[iid].file_name} (images[{where[iid]}]) and "
                f"{file_name} (images[{index}]); the annotations with image_id {iid} would all go to one of them. "
                "Give each image its own id")
        if file_name in by_file:
            raise CocoAnnotationError(f"{path}: file {file_name} is listed twice, as image {by_file[file_name]} and "
                                      f"image {iid}; its boxes would be split between them. List each file once")
        declared = {key: image[key] for key in ("width", "height") if key in image}
        for key, value in declared.items():
            if not is_number(value) or not 0 < value < 2 ** 31:
                raise CocoAnnotationError(
                    f"{path}: image {iid} ({file_name}) has {key} {short(value)}; it must be a positive number of "
                    "pixels (or leave width and height out: edh then reads them from the image file)")
        file = folder / file_name
        exists = file.is_file()
        size = None
        if len(declared) == 2:
            size = (float(declared["width"]), float(declared["height"]))
        elif exists:
            size = _size_from_file(file, iid, path)
        images[iid] = _ImageEntry(iid, file_name, file, exists, size, len(declared) == 2)
        where[iid], by_file[file_name] = index, iid
    return images


def _check_box(bbox: Any, width: float, height: float) -> tuple[str, str] | None:
    """``(kind, reason)`` of what is wrong with a COCO ``[x, y, w, h]`` box in a ``width`` x ``height`` image."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        return "malformed bbox", f"malformed bbox {short(bbox)} (expected [x, y, width, height], 4 numbers)"
    if not all(is_number(v) for v in bbox):
        return "malformed bbox", f"malformed bbox {list(bbox)} (NaN or infinite values)"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "degenerate box", f"zero or negative width or height (bbox {list(bbox)})"
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return "box outside image", f"box {list(bbox)} lies outside its {width:g}x{height:g} image"
    return None


@dataclass
class CocoRead:
    """What `read_coco` found.

    Attributes:
        images: images whose file exists, with only their valid, non-crowd boxes.
        issues: every bad annotation (and every image whose file is missing).
        ignored: counts of annotations left out on purpose (``crowd``).
        names: label -> category name.
        label_of: category id -> label.
        annotations: how many annotations the file lists (``None``: it has no ``annotations`` key).
    """

    images: list[CocoImage]
    issues: list[CocoIssue]
    ignored: Counter
    names: dict[int, str]
    label_of: dict[int, int]
    annotations: int | None = 0


def read_coco(annotations: str | Path, images: str | Path, label_of: dict[int, int] | None = None,
              training: bool | None = None, masks: bool = False) -> CocoRead:
    """The images of a COCO file with their valid boxes, and every bad annotation (see the module docstring).

    Args:
        annotations: the COCO JSON file.
        images: the folder the ``file_name`` of each image is relative to.
        label_of: category id -> label (default: this file's categories in id order, 1..K).
        training: a training file must have ``annotations`` (default: when ``label_of`` is not given);
            a held-out one without them gets a warning.
        masks: read and check each kept box's ``segmentation`` too (a bad one is an issue).

    Raises:
        CocoAnnotationError: a file edh cannot use (what is refused whatever ``strict`` says).
        CocoFilesMissingError: no such file or folder.
    """
    annotations, folder = Path(annotations), Path(images)
    training = label_of is None if training is None else training
    if not folder.is_dir():
        raise CocoFilesMissingError(f"COCO images folder {folder} {'is a file' if folder.exists() else 'does not exist'}"
                                    "; data.images must be the folder the file_name of each image is relative to")
    data = read_coco_json(annotations)
    categories = _read_categories(data, annotations)
    if label_of is None:
        label_of = {cid: k + 1 for k, cid in enumerate(sorted(categories))}
    names = {label_of[c]: n for c, n in categories.items() if c in label_of}
    entries = _read_images(data, annotations, folder)
    listed = _entries(data, "annotations", annotations, required=False)
    if listed is None:
        if training:
            raise CocoAnnotationError(
                f"{annotations} has no 'annotations' list, so its {len(entries)} images hold no boxes to train a "
                "detector on. Add the annotations (an empty list [] says explicitly that the images hold no "
                "objects), or check that this is not an image-info file such as image_info_test2017.json")
        log.warning("%s has no 'annotations' list: its %d images are scored as holding no objects", annotations,
                    len(entries))
    issues: list[CocoIssue] = []
    ignored: Counter = Counter()
    kept: dict[int, tuple[list, list, list]] = {}
    seen: dict[int, tuple[int, Any]] = {}
    with_annotations: set[int] = set()
    for index, ann in enumerate(listed or []):
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        if not is_int(ann_id):
            raise CocoAnnotationError(
                f"{annotations}: annotations[{index}] (image_id {short(image_id)}) has id {short(ann_id)}; every "
                "annotation needs its own integer id (edh names bad annotations by it)")
        entry = entries.get(image_id) if is_int(image_id) else None
        file = entry.file_name if entry else None
        if ann_id in seen:
            first_index, first_image = seen[ann_id]
            first_file = entries[first_image].file_name if is_int(first_image) and first_image in entries else None
            raise CocoAnnotationError(
                f"{annotations}: annotation id {ann_id} is used twice: annotations[{first_index}] (image "
                f"{short(first_image)}{', ' + first_file if first_file else ''}) and annotations[{index}] (image "
                f"{short(image_id)}{', ' + file if file else ''}); give each annotation its own id")
        seen[ann_id] = (index, image_id)
        issue = lambda kind, reason: issues.append(CocoIssue(ann_id, image_id, reason, kind, file))  # noqa: E731
        if not is_int(image_id):
            issue("malformed image id", f"image_id {short(image_id)} is not an integer")
            continue
        if entry is None:
            issue("unknown image", f"unknown image id {image_id} (not in images)")
            continue
        with_annotations.add(image_id)
        if not entry.exists:
            issue("missing image file", f"image file {entry.file} is missing")
            continue
        category = ann.get("category_id")
        if not is_int(category):
            issue("malformed category id", f"category_id {short(category)} is not an integer")
            continue
        if category not in label_of:
            issue("unknown category", f"unknown category id {category!r}")
            continue
        problem = _check_box(ann.get("bbox"), *entry.size)
        if problem:
            issue(*problem)
            continue
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or not isinstance(crowd, (int, float)):  # True / False are 1 / 0
            issue("malformed iscrowd", f"iscrowd {short(crowd)} (expected 0 or 1)")
            continue
        if crowd:
            ignored["crowd"] += 1
            continue
        problem = check_segmentation(ann.get("segmentation"), *entry.size) if masks else None
        if problem:
            issue(*problem)
            continue
        x, y, w, h = ann["bbox"]
        boxes, labels, segmentations = kept.setdefault(image_id, ([], [], []))
        boxes.append([float(x), float(y), float(x + w), float(y + h)])
        labels.append(label_of[category])
        segmentations.append(ann.get("segmentation"))
    for image_id, entry in entries.items():
        if not entry.exists and image_id not in with_annotations:
            issues.append(CocoIssue(None, image_id, f"image file {entry.file} is missing (an image without "
                                    "annotations: left out)", "missing image file", entry.file_name))
    found = []
    for image_id in sorted(entries):
        entry = entries[image_id]
        if not entry.exists:
            continue
        boxes, labels, segmentations = kept.get(image_id, ([], [], []))
        found.append(CocoImage(entry.file, image_id, torch.tensor(boxes, dtype=torch.float64).float().reshape(-1, 4),
                               torch.tensor(labels, dtype=torch.int64), entry.size if entry.declared else None,
                               str(annotations), segmentations if masks else None))
    if not found:
        missing = [entries[i].file for i in sorted(entries)][:3]
        raise CocoFilesMissingError(
            f"none of the {len(entries)} images listed in {annotations} is in {folder} (e.g. "
            f"{', '.join(map(str, missing))}); is data.images the folder their file_name is relative to?")
    return CocoRead(found, issues, ignored, names, label_of, None if listed is None else len(listed))
