"""Mosaic: four training items tiled 2 x 2 into one image, the recipe YOLO detectors train with.

`MosaicDataset` wraps a detection training split (``coco``, ``scenes``: the factories apply it when
``augment.mosaic`` is set, to the training split only). With probability ``probability`` an item is
the mosaic of itself and three other items drawn at random from the split:

- the output has the size ``(H, W)`` of the item asked for; a centre ``(cy, cx)`` is drawn uniformly
  in the middle of it (``centre``: fractions of ``H`` and ``W``) and splits it into four quadrants;
- item ``k`` is placed with one corner on the centre (the first with its bottom-right corner, the
  second bottom-left, the third top-right, the fourth top-left), at its own scale, and only the part
  inside its quadrant is kept: this is the central ``H x W`` window of YOLO's ``2H x 2W`` mosaic;
  uncovered pixels are 0 in the image (the mean colour, as `collate_detection` pads) and in masks;
- ``boxes`` are moved with their item and clipped to its quadrant, ``masks`` ``(N, H, W)`` and a class
  map ``mask`` ``(H, W)`` pasted with their pixels; an object left with a box under 1 pixel (or an
  empty mask) is dropped with its label and mask. Other targets are the first item's; ``finish``
  recomputes those that describe the whole image (``scenes``: tight boxes, ``label``, ``count``).

A mosaic left without any object gives the item itself. The draws (whether, which partners, the
centre) come from torch's RNG, which `edh.train.data_loading.SeededItems` seeds from
``(seed, epoch, index)``: every epoch and item is reproducible, in any worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

Item = tuple[torch.Tensor, dict[str, Any]]


def _paste(canvas: torch.Tensor, source: torch.Tensor, top: int, left: int, region: tuple[int, int, int, int]) -> None:
    """Copy ``source`` ``(..., h, w)``, placed with its corner at ``(top, left)`` of ``canvas`` ``(..., H, W)``,
    into ``canvas`` where it falls inside ``region`` ``(y1, x1, y2, x2)``."""
    height, width = source.shape[-2:]
    y1, x1 = max(region[0], top), max(region[1], left)
    y2, x2 = min(region[2], top + height), min(region[3], left + width)
    if y2 > y1 and x2 > x1:
        canvas[..., y1:y2, x1:x2] = source[..., y1 - top:y2 - top, x1 - left:x2 - left]


def tile_mosaic(items: list[Item], centre: tuple[int, int], finish: Callable[[dict], dict] | None = None) -> Item:
    """The mosaic of four ``(image (C, h, w), targets)`` items around ``centre`` ``(cy, cx)``, at the size of the
    first item (see the module docstring); the first item itself when no object is left.

    Targets read: ``boxes`` ``(N, 4)`` xyxy, ``labels`` ``(N,)``, ``masks`` ``(N, h, w)`` (optional), ``mask``
    ``(h, w)`` (optional); the others are the first item's, then ``finish(targets)`` when given.
    """
    first_image, first = items[0]
    height, width = first_image.shape[-2:]
    cy, cx = centre
    regions = [(0, 0, cy, cx), (0, cx, cy, width), (cy, 0, height, cx), (cy, cx, height, width)]  # y1, x1, y2, x2
    image = first_image.new_zeros(first_image.shape)  # (C, H, W)
    class_map = first["mask"].new_zeros((height, width)) if "mask" in first else None
    boxes, labels, masks = [], [], []
    for corner, ((item_image, target), region) in enumerate(zip(items, regions)):
        h, w = item_image.shape[-2:]
        top = cy - h if corner in (0, 1) else cy  # the item's corner on the centre
        left = cx - w if corner in (0, 2) else cx
        _paste(image, item_image, top, left, region)
        if class_map is not None:
            _paste(class_map, target["mask"], top, left, region)
        moved = target["boxes"].reshape(-1, 4) + torch.tensor([left, top, left, top], dtype=target["boxes"].dtype)
        moved[:, 0::2] = moved[:, 0::2].clamp(region[1], region[3])
        moved[:, 1::2] = moved[:, 1::2].clamp(region[0], region[2])
        keep = ((moved[:, 2] - moved[:, 0]) >= 1) & ((moved[:, 3] - moved[:, 1]) >= 1)  # (N,)
        if "masks" in first:
            pasted = target["masks"].new_zeros((len(moved), height, width))  # (N, H, W)
            _paste(pasted, target["masks"], top, left, region)
            keep &= pasted.flatten(1).amax(1) > 0  # (N,): a pixel left (any() of uint8 would be uint8)
            masks.append(pasted[keep])
        boxes.append(moved[keep])
        labels.append(target["labels"][keep])
    if not sum(len(b) for b in boxes):
        return items[0]
    targets = dict(first)
    targets.update(boxes=torch.cat(boxes), labels=torch.cat(labels))
    if masks:
        targets["masks"] = torch.cat(masks)
    if class_map is not None:
        targets["mask"] = class_map
    return image, finish(targets) if finish else targets


class MosaicDataset(Dataset):
    """A training split whose items are, with probability ``probability``, mosaics of four of its items
    (see the module docstring). Attributes the split has (``augment``, ``images``...) are read through.

    Args:
        dataset: the training split; items ``(image (C, H, W), {"boxes", "labels", ["masks"], ["mask"], ...})``.
        probability: chance that an item is a mosaic (0 to 1).
        finish: ``targets -> targets`` run on every mosaic's targets (a module-level function, so
            DataLoader workers can pickle it), or ``None``.
        centre: the range of the centre, as fractions of the output's height and width.
    """

    def __init__(self, dataset: Dataset, probability: float, finish: Callable[[dict], dict] | None = None,
                 centre: tuple[float, float] = (0.25, 0.75)) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"the mosaic probability must be between 0 and 1, got {probability}")
        self.dataset, self.probability, self.finish, self.centre = dataset, probability, finish, centre

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "dataset":  # unpickling: no dataset yet
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Item:
        if self.probability == 0 or float(torch.rand(())) >= self.probability:
            return self.dataset[index]
        partners = torch.randint(len(self.dataset), (3,)).tolist()
        items = [self.dataset[i] for i in (index, *partners)]
        height, width = items[0][0].shape[-2:]
        low, high = self.centre
        cy, cx = (int(side * (low + (high - low) * float(torch.rand(())))) for side in (height, width))
        return tile_mosaic(items, (cy, cx), self.finish)
