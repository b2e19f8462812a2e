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
- ``targets["label"]``: int64 scalar, the 0-based class of the largest object (for classification).
- ``targets["count"]``: float32 scalar, the number of objects in the scene (for a regression head).

Batches need `collate_scenes` (on the bundle as ``collate_fn``): images, masks and labels are
stacked (and ``count``), ``boxes`` and ``labels`` stay lists of per-image tensors because N varies.
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
    ``boxes`` (``[(N_i, 4)]``) and ``labels`` (``[(N_i,)]``) as lists, one tensor per image."""
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
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, boxes: list[torch.Tensor],
                 labels: list[torch.Tensor], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.images, self.masks, self.boxes, self.labels = images, masks, boxes, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = (self.images[index].float() / 255.0 - self.mean) / self.std
        boxes, labels = self.boxes[index], self.labels[index]
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        largest = labels[int(areas.argmax())] - 1
        return image, {"mask": self.masks[index].long(), "boxes": boxes.clone(), "labels": labels.clone(),
                       "label": largest.clone(), "count": torch.tensor(float(len(labels)))}


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
                overlap: bool) -> tuple[np.ndarray, np.ndarray, list, list]:
    """One scene: canvas ``(C, S, S)`` float in [0, 1], mask ``(S, S)`` uint8, boxes, mask ids."""
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
    boxes, labels = [], []
    for order, class_id in enumerate(ids, start=1):
        ys, xs = np.nonzero(order_mask == order)
        if len(ys) == 0:  # hidden under later sprites, or too faint to have a pixel of alpha >= 0.5
            continue
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(class_id)
        mask[order_mask == order] = class_id
    return canvas, mask, boxes, labels


def render_scenes(count: int, sprite_alpha: np.ndarray, sprite_classes: np.ndarray, rng: np.random.Generator,
                  image_size: int, objects: tuple[int, int], sprite_size: tuple[int, int], noise: float,
                  in_channels: int, overlap: bool) -> tuple[torch.Tensor, torch.Tensor, list, list]:
    """Draw ``count`` scenes; returns uint8 images ``(count, C, S, S)``, uint8 masks ``(count, S, S)``,
    and per scene its boxes ``(N, 4)`` float32 and mask ids ``(N,)`` int64.

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
    all_boxes, all_labels = [], []
    for index in range(count):
        labels: list = []
        while not labels:
            canvas, mask, boxes, labels = _render_one(rng, sprite_alpha, sprite_classes, S, objects, sprite_size,
                                                      noise, in_channels, overlap)
        images[index] = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
        masks[index] = mask
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    return torch.from_numpy(images), torch.from_numpy(masks), all_boxes, all_labels


def _pair(value: int | list[int], name: str) -> tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else tuple(value)
    if not 1 <= low <= high:
        raise ValueError(f"data.{name} must be a count or [min, max] with 1 <= min <= max, got {value}")
    return int(low), int(high)


@register_dataset("scenes")
def scenes(image_size: int = 64, objects: int | list[int] = (1, 3), sprite_size: int | list[int] = (16, 32),
           sprites: str = "digits", noise: float = 0.05, in_channels: int = 3, overlap: bool = False,
           num_train: int = 2000, num_val: int = 250, num_test: int = 500, fashion_root: str | None = None,
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
        seed: fixes the sprite split and every scene.
    """
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
        rendered = render_scenes(count, alpha, classes, rng, image_size, counts, sizes, noise, in_channels, overlap)
        parts[split] = SceneDataset(*rendered, mean, std)
    mask_names = ["background", *class_names]
    info = DataInfo(
        "image", in_channels, (image_size, image_size), mean, std, list(class_names),
        {"mask": "segmentation", "boxes": "detection", "labels": "detection", "label": "classification",
         "count": "regression"},
        {"dataset": "scenes", "sprites": sprites, "mask_class_names": mask_names,
         "head_defaults": {"mask": {"num_classes": len(mask_names), "class_names": mask_names}}},
    )
    return DataBundle(parts["train"], parts["val"], parts["test"], info, collate_fn=collate_scenes)
