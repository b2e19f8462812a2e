"""``scenes``: real sprites (scikit-learn digits or Fashion-MNIST) pasted onto noisy canvases.

Every scene is drawn from the same sprites, so one dataset serves classification, segmentation,
detection and multi-task models. An item is ``(image, targets)``:

- ``image``: ``(C, H, W)`` float, normalised with ``DataInfo.mean`` / ``std`` (pixels in [0, 1] before).
- ``targets["mask"]``: ``(H, W)`` int64 class index per pixel; 0 is background, object class ``k``
  (0-based, as in ``DataInfo.class_names``) is ``k + 1``. A pixel belongs to an object where the
  sprite's alpha is at least 0.5, the same alpha that blends the sprite into the image.
- ``targets["boxes"]``: ``(N, 4)`` float32 ``x1, y1, x2, y2`` in pixels, the tight box of each
  object's mask pixels (``x2 = last column + 1``, torchvision's convention), N >= 1.
- ``targets["labels"]``: ``(N,)`` int64, each object's mask id (``1..K``; 0 stays background, as
  torchvision's detectors expect).
- ``targets["masks"]``: ``(N, H, W)`` uint8 instance masks, one per box (in the order of ``boxes``): 1 on
  the object's own visible pixels (the same alpha >= 0.5 rule as ``mask``), 0 elsewhere; each box is
  the tight box of its mask.
- ``targets["label"]``: int64 scalar, the 0-based class of the largest object (for classification).
- ``targets["count"]``: float32 scalar, the number of objects in the scene (for a regression head).

Training augmentation (``augment``, ``crop_size``; off by default) moves image, mask and objects
together (`edh.data.augment`); the targets are then recomputed from the objects left visible (the
boxes stay tight, as above), so every task's target describes the augmented image. ``augment.mosaic``
tiles four training items into one (`edh.data.mosaic`); its targets are recomputed the same way.

Batches need `collate_scenes` (on the bundle as ``collate_fn``): images, masks and labels are
stacked (and ``count``), ``boxes``, ``labels`` and ``masks`` stay lists of per-image tensors because N varies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from edh.data.base import DataBundle, DataInfo, split_indices
from edh.core.registry import register_dataset

DIGIT_CLASSES = [str(i) for i in range(10)]
MEAN, STD = 0.19, 0.15  # normalisation per channel: the generated images' mean and std (digits, default options)
STACKED = ("mask", "label", "count")  # targets with one fixed shape per image; everything else stays a list


def collate_scenes(items: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Batch scene items: ``(B, C, H, W)`` images; ``mask`` ``(B, H, W)``, ``label`` and ``count`` ``(B,)`` stacked;
    ``boxes`` (``[(N_i, 4)]``), ``labels`` (``[(N_i,)]``) and ``masks`` (``[(N_i, H, W)]``) as lists, one tensor
    per image."""
    images = torch.stack([image for image, _ in items])
    targets: dict[str, Any] = {}
    for key in items[0][1]:
        values = [t[key] for _, t in items]
        targets[key] = torch.stack(values) if key in STACKED else values
    return images, targets


class SceneDataset(Dataset):
    """Generated scenes held in memory as uint8; items as described in the module docstring.

    Args:
        images: ``(N, C, H, W)`` uint8.
        masks: ``(N, H, W)`` uint8 class ids.
        boxes: per scene ``(N_i, 4)`` float32 xyxy.
        labels: per scene ``(N_i,)`` int64 mask ids (1..K).
        mean, std: per-channel normalisation of the [0, 1] image.
        instances: ``(N, H, W)`` instance maps (`render_scenes`): the items' ``masks`` come from them.
        augment: a joint pipeline (`edh.data.augment.augment_pipeline`) applied to image, mask, boxes and
            instance map, or ``None``. Boxes are then the tight boxes of each object's pixels left
            visible (objects that left the image are dropped with their labels), and ``count`` and
            ``label`` follow them. A draw that leaves no object is drawn again (`AUGMENT_TRIES` times);
            then the item is the ``crop_size`` window centred on its largest object, unaugmented.
        crop_size: ``(H, W)`` of ``augment``'s crop, or ``None``.
        pipeline_boxes: give ``augment`` the boxes (and labels) too, for steps that read them (``iou_crop``);
            off otherwise, as moving boxes costs more than half of the pipeline's time.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, boxes: list[torch.Tensor],
                 labels: list[torch.Tensor], mean: tuple[float, ...], std: tuple[float, ...],
                 instances: torch.Tensor, augment: Any = None, crop_size: tuple[int, int] | None = None,
                 pipeline_boxes: bool = False) -> None:
        self.images, self.masks, self.boxes, self.labels = images, masks, boxes, labels
        self.instances, self.augment, self.crop_size = instances, augment, crop_size
        self.pipeline_boxes = pipeline_boxes
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.augment is not None:
            return self._augmented(index)
        image = (self.images[index].float() / 255.0 - self.mean) / self.std
        boxes, labels = self.boxes[index], self.labels[index]
        targets = _targets(self.masks[index], boxes.clone(), labels.clone())
        targets["masks"] = instance_masks(self.instances[index], len(labels))
        return image, targets

    def _augmented(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision import tv_tensors

        sample = {"image": tv_tensors.Image(self.images[index].float() / 255.0),  # (C, H, W) in [0, 1]
                  "mask": tv_tensors.Mask(self.masks[index]), "objects": tv_tensors.Mask(self.instances[index])}
        labels = self.labels[index]
        with_boxes = sample  # boxes only for the steps that read them (iou_crop); targets come from the pixels
        if self.pipeline_boxes:
            with_boxes = {**sample, "boxes": tv_tensors.BoundingBoxes(self.boxes[index], format="XYXY",
                                                                       canvas_size=tuple(sample["mask"].shape)),
                          "labels": labels}
        for _ in range(AUGMENT_TRIES):
            out = self.augment(with_boxes)
            boxes, kept, masks = visible_objects(out["objects"], len(labels))
            if len(boxes):
                break
        else:
            out = self._around_largest(sample, index)
            boxes, kept, masks = visible_objects(out["objects"], len(labels))
        image = (out["image"].as_subclass(torch.Tensor) - self.mean) / self.std  # (C, H', W')
        mask = out["mask"].as_subclass(torch.Tensor)
        targets = _targets(mask, boxes, labels[kept])
        targets["masks"] = masks
        if not len(boxes):  # nothing visible even so (a tiny crop of a hollow sprite): keep the scene's class
            targets["label"] = _targets(self.masks[index], self.boxes[index], labels)["label"]
        return image, targets

    def _around_largest(self, sample: dict[str, Any], index: int) -> dict[str, Any]:
        """The ``crop_size`` window centred on the scene's largest object (the whole scene without a crop)."""
        from edh.data.augment import crop_or_pad

        if self.crop_size is None:
            return sample
        boxes = self.boxes[index]
        x1, y1, x2, y2 = boxes[int(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).argmax())].tolist()
        height, width = sample["mask"].shape[-2:]
        corner = []
        for centre, side, out in ((y1 + y2) / 2, height, self.crop_size[0]), ((x1 + x2) / 2, width, self.crop_size[1]):
            low, high = sorted((0, side - out))
            corner.append(min(max(int(centre) - out // 2, low), high))
        return {key: crop_or_pad(value, corner[0], corner[1], self.crop_size, 0) for key, value in sample.items()}


AUGMENT_TRIES = 10


def instance_masks(objects: torch.Tensor, count: int) -> torch.Tensor:
    """``(count, H, W)`` uint8: 1 where the instance map ``(H, W)`` holds object ``i + 1``."""
    objects = objects.as_subclass(torch.Tensor)
    return (objects[None] == torch.arange(1, count + 1, dtype=objects.dtype).view(-1, 1, 1)).to(torch.uint8)


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``(M, 4)`` float xyxy boxes (``x2`` = last column + 1) of non-empty masks ``(M, H, W)``."""
    from torchvision.ops import masks_to_boxes

    boxes = masks_to_boxes(masks) if len(masks) else torch.zeros(0, 4)  # (M, 4), x2 / y2 inclusive
    boxes[:, 2:] += 1
    return boxes.float()


def visible_objects(objects: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The objects ``1..count`` of an instance map ``(H, W)`` that still have pixels: their tight ``(M, 4)``
    xyxy boxes, their indices ``(M,)`` (0-based) and their masks ``(M, H, W)`` uint8."""
    present = instance_masks(objects, count)  # (N, H, W)
    kept = present.flatten(1).any(1).nonzero().flatten()  # (M,)
    masks = present[kept]
    return tight_boxes(masks), kept, masks


def visible_boxes(objects: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`visible_objects` without the masks: the tight boxes ``(M, 4)`` and the object indices ``(M,)``."""
    boxes, kept, _ = visible_objects(objects, count)
    return boxes, kept


def mosaic_targets(targets: dict[str, Any]) -> dict[str, Any]:
    """A scene mosaic's targets (`edh.data.mosaic`): tight boxes of the pasted masks, then ``label`` and
    ``count`` of the objects in it."""
    result = _targets(targets["mask"], tight_boxes(targets["masks"]), targets["labels"])
    result["masks"] = targets["masks"]
    return result


def _targets(mask: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """An item's targets from its mask, boxes and labels: ``label`` is the class of the largest box."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    largest = labels[int(areas.argmax())] - 1 if len(labels) else torch.tensor(-1)
    return {"mask": mask.long(), "boxes": boxes, "labels": labels, "label": largest.clone(),
            "count": torch.tensor(float(len(labels)))}


def _load_sprites(sprites: str, fashion_root: str | None, seed: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Sprites per split as float alpha maps in [0, 1] ``(N, h, w)`` with class ids, and the class names.

    Digits are split train / val / test (70 / 10 / 20 %) by ``seed``; Fashion-MNIST uses its
    official training images for train and val and its test images for test, so no sprite of a
    test scene was seen in training.
    """
    if sprites == "digits":
        from sklearn.datasets import load_digits

        raw = load_digits()
        alpha, classes = raw.images.astype(np.float32) / 16.0, raw.target.astype(np.int64)
        train, val, test = split_indices(len(alpha), 0.1, 0.2, seed)
        return {"train": (alpha[train], classes[train]), "val": (alpha[val], classes[val]),
                "test": (alpha[test], classes[test])}, DIGIT_CLASSES
    if sprites == "fashion-mnist":
        from edh.data.images import FASHION_CLASSES, _read_idx, find_fashion_files

        files = find_fashion_files(fashion_root)
        train_alpha = _read_idx(files["train"][0]).astype(np.float32) / 255.0
        train_classes = _read_idx(files["train"][1]).astype(np.int64)
        train, val, _ = split_indices(len(train_alpha), 0.1, 0.0, seed)
        test_alpha = _read_idx(files["test"][0]).astype(np.float32) / 255.0
        test_classes = _read_idx(files["test"][1]).astype(np.int64)
        return {"train": (train_alpha[train], train_classes[train]), "val": (train_alpha[val], train_classes[val]),
                "test": (test_alpha, test_classes)}, FASHION_CLASSES
    raise ValueError(f"data.sprites must be 'digits' or 'fashion-mnist', got {sprites!r}")


def _resized(alpha: np.ndarray, size: int) -> np.ndarray:
    """A sprite's alpha map resized to ``size`` x ``size`` (bilinear, antialiased), in [0, 1]."""
    tensor = torch.from_numpy(alpha)[None, None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0, 0].clamp(0, 1).numpy()


def _render_one(rng: np.random.Generator, sprite_alpha: np.ndarray, sprite_classes: np.ndarray, S: int,
                objects: tuple[int, int], sprite_size: tuple[int, int], noise: float, in_channels: int,
                overlap: bool) -> tuple[np.ndarray, np.ndarray, list, list, np.ndarray]:
    """One scene: canvas ``(C, S, S)`` float in [0, 1], mask ``(S, S)`` uint8, boxes, mask ids, and the
    instance map ``(S, S)``: object ``i`` (1-based, in the order of the boxes) on its pixels, 0 elsewhere."""
    canvas = np.full((in_channels, S, S), rng.uniform(0.0, 0.3), dtype=np.float32)
    if noise > 0:
        canvas += rng.normal(0.0, noise, size=canvas.shape).astype(np.float32)
    order_mask = np.zeros((S, S), dtype=np.uint8)  # 1-based placement order of the visible object
    placed: list[tuple[int, int, int]] = []  # (y, x, size) squares already used
    ids: list[int] = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        size = int(rng.integers(sprite_size[0], sprite_size[1] + 1))
        for _ in range(50):
            y, x = int(rng.integers(0, S - size + 1)), int(rng.integers(0, S - size + 1))
            if overlap or all(y + size <= py or py + ps <= y or x + size <= px or px + ps <= x
                              for py, px, ps in placed):
                break
        else:
            continue  # no free place for this sprite
        pick = int(rng.integers(len(sprite_alpha)))
        alpha = _resized(sprite_alpha[pick], size)
        colour = rng.uniform(0.6, 1.0, size=(in_channels, 1, 1)).astype(np.float32)
        if in_channels == 3:
            colour[int(rng.integers(3))] *= rng.uniform(0.0, 0.5)  # a hue, not always white
        region = canvas[:, y:y + size, x:x + size]
        canvas[:, y:y + size, x:x + size] = alpha * colour + (1 - alpha) * region
        order_mask[y:y + size, x:x + size][alpha >= 0.5] = len(ids) + 1
        placed.append((y, x, size))
        ids.append(int(sprite_classes[pick]) + 1)
    mask = np.zeros_like(order_mask)
    instances = np.zeros(order_mask.shape, np.uint8 if objects[1] < 256 else np.int32)
    boxes, labels = [], []
    for order, class_id in enumerate(ids, start=1):
        ys, xs = np.nonzero(order_mask == order)
        if len(ys) == 0:  # hidden under later sprites, or too faint to have a pixel of alpha >= 0.5
            continue
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(class_id)
        mask[order_mask == order] = class_id
        instances[order_mask == order] = len(labels)
    return canvas, mask, boxes, labels, instances


def render_scenes(count: int, sprite_alpha: np.ndarray, sprite_classes: np.ndarray, rng: np.random.Generator,
                  image_size: int, objects: tuple[int, int], sprite_size: tuple[int, int], noise: float,
                  in_channels: int, overlap: bool) -> tuple[torch.Tensor, torch.Tensor, list, list, torch.Tensor]:
    """Draw ``count`` scenes; returns uint8 images ``(count, C, S, S)``, uint8 masks ``(count, S, S)``,
    per scene its boxes ``(N, 4)`` float32 and mask ids ``(N,)`` int64, and the instance maps
    ``(count, S, S)`` (object ``i`` of the scene's boxes on its pixels, 1-based; 0 is background).

    Each scene: a flat background of random grey level plus Gaussian noise (std ``noise``), then
    ``objects[0]..objects[1]`` sprites at random sizes and places, each in a random bright colour
    (grey when ``in_channels`` is 1). Without ``overlap``, sprites are placed so their squares do
    not intersect (a sprite that finds no free place after 50 tries is skipped); with it, later
    sprites cover earlier ones and boxes bound each object's visible pixels (an object hidden
    completely is dropped). A scene left without any object is drawn again.
    """
    S = image_size
    images = np.empty((count, in_channels, S, S), dtype=np.uint8)
    masks = np.empty((count, S, S), dtype=np.uint8)
    instances = np.empty((count, S, S), dtype=np.uint8 if objects[1] < 256 else np.int32)
    all_boxes, all_labels = [], []
    for index in range(count):
        labels: list = []
        while not labels:
            canvas, mask, boxes, labels, objects_map = _render_one(rng, sprite_alpha, sprite_classes, S, objects,
                                                                   sprite_size, noise, in_channels, overlap)
        images[index] = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
        masks[index], instances[index] = mask, objects_map
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    return torch.from_numpy(images), torch.from_numpy(masks), all_boxes, all_labels, torch.from_numpy(instances)


def _pair(value: int | list[int], name: str) -> tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else tuple(value)
    if not 1 <= low <= high:
        raise ValueError(f"data.{name} must be a count or [min, max] with 1 <= min <= max, got {value}")
    return int(low), int(high)


@register_dataset("scenes")
def scenes(image_size: int = 64, objects: int | list[int] = (1, 3), sprite_size: int | list[int] = (16, 32),
           sprites: str = "digits", noise: float = 0.05, in_channels: int = 3, overlap: bool = False,
           num_train: int = 2000, num_val: int = 250, num_test: int = 500, fashion_root: str | None = None,
           augment: str | dict[str, Any] = "none", crop_size: int | list[int] | None = None,
           seed: int = 0) -> DataBundle:
    """Scenes of real sprites with exact masks, boxes and labels (see the module docstring for items).

    Args:
        image_size: canvas side in pixels.
        objects: objects per scene, a count or ``[min, max]``.
        sprite_size: sprite side in pixels, a size or ``[min, max]`` (must fit the canvas).
        sprites: ``digits`` (scikit-learn's 8x8 handwritten digits) or ``fashion-mnist`` (the
            real 28x28 clothes, from the Debian package ``dataset-fashion-mnist`` or ``fashion_root``).
        noise: standard deviation of the Gaussian background noise (pixels in [0, 1]).
        in_channels: 3 (coloured sprites) or 1 (grey).
        overlap: let sprites cover each other (boxes then bound the visible pixels).
        num_train, num_val, num_test: scenes per split; each split draws from its own sprites.
        fashion_root: a folder with the Fashion-MNIST IDX files (default: the Debian package's).
        augment: training augmentation, ``none`` (default: the scenes as drawn), ``flip`` or a mapping of
            steps (``{hflip: 0.5, rotate: 15, scale: [0.5, 2.0], color: 0.2}``, `edh.data.augment.parse_augment`).
            Image, mask and boxes move together; boxes, ``labels``, ``masks``, ``count`` and ``label`` are then
            those of the objects left visible (see `SceneDataset`). Detection steps: ``iou_crop`` (a probability)
            and ``mosaic`` (a probability: four training items tiled into one, `edh.data.mosaic`). Val / test: never.
        crop_size: ``N`` or ``[h, w]``: training items are random windows of that size (padded with
            background where larger than the canvas); val / test keep ``image_size``. Default: no crop.
        seed: fixes the sprite split and every scene (and, per epoch and item, the augmentation).
    """
    from edh.data.augment import augment_pipeline, parse_augment, parse_size
    from edh.data.mosaic import MosaicDataset

    steps = parse_augment(augment)
    crop = parse_size(crop_size, "data.crop_size")
    train_augment = augment_pipeline(augment, crop, 0, in_channels, detection=True) \
        if steps.active or crop else None
    sizes = _pair(sprite_size, "sprite_size")
    counts = _pair(objects, "objects")
    if sizes[1] > image_size:
        raise ValueError(f"data.sprite_size maximum {sizes[1]} does not fit data.image_size {image_size}; "
                         f"use sprites of at most {image_size} pixels")
    if in_channels not in (1, 3):
        raise ValueError(f"data.in_channels must be 1 or 3 for scenes, got {in_channels}")
    if min(num_train, num_val, num_test) < 0 or num_train == 0:
        raise ValueError("data.num_train must be positive and num_val / num_test not negative")
    pools, class_names = _load_sprites(sprites, fashion_root, seed)
    mean, std = (MEAN,) * in_channels, (STD,) * in_channels
    parts = {}
    for offset, (split, count) in enumerate((("train", num_train), ("val", num_val), ("test", num_test))):
        rng = np.random.default_rng([seed, offset])
        alpha, classes = pools[split]
        *rendered, instances = render_scenes(count, alpha, classes, rng, image_size, counts, sizes, noise,
                                             in_channels, overlap)
        augmented = split == "train" and train_augment is not None
        parts[split] = SceneDataset(*rendered, mean, std, instances, train_augment if augmented else None, crop,
                                    pipeline_boxes=bool(steps.iou_crop))
    if steps.mosaic:
        parts["train"] = MosaicDataset(parts["train"], steps.mosaic, finish=mosaic_targets)
    mask_names = ["background", *class_names]
    info = DataInfo(
        "image", in_channels, (image_size, image_size), mean, std, list(class_names),
        {"mask": "segmentation", "boxes": "detection", "labels": "detection", "masks": "instance_segmentation",
         "label": "classification", "count": "regression"},
        {"dataset": "scenes", "sprites": sprites, "mask_class_names": mask_names,
         "head_defaults": {"mask": {"num_classes": len(mask_names), "class_names": mask_names}}},
    )
    return DataBundle(parts["train"], parts["val"], parts["test"], info, collate_fn=collate_scenes)
