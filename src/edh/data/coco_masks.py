"""COCO ``segmentation`` fields: checked when the file is read, decoded to instance masks when an item is.

A COCO annotation's ``segmentation`` is one of (the COCO format, as pycocotools reads it):

- polygons: a list of polygons, each a flat list ``[x1, y1, x2, y2, ...]`` of at least 3 points, in pixels;
- uncompressed RLE: ``{"size": [height, width], "counts": [n0, n1, ...]}``, run lengths in column-major
  order starting with background, summing to ``height * width``;
- compressed RLE: the same with ``counts`` a string (pycocotools' encoding of the run lengths).

`check_segmentation` says what is wrong with one, without decoding it (pycocotools' decoder trusts an
RLE's runs to add up to its image, so they are checked here); `decode_masks` turns an image's kept
segmentations into ``(N, H, W)`` uint8 masks through ``pycocotools.mask`` (``frPyObjects``, ``merge``,
``decode``: what ``COCO.annToMask`` does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edh.data.json_values import is_number, short


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def rle_string_counts(text: str) -> list[int] | None:
    """The run lengths of a compressed RLE string, or ``None`` when it is not one.

    Each run is 5 bits per character (``chr(48 + bits)``, bit 0x20: more characters follow, bit 0x10 of
    the last: negative), and from the fourth run on it is stored as the difference to the run two before.
    """
    counts: list[int] = []
    value = shift = 0
    for char in text:
        code = ord(char) - 48
        if not 0 <= code < 64:
            return None
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift  # sign extension
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value = shift = 0
    return None if shift else counts


def _check_polygons(polygons: list, width: float, height: float) -> tuple[str, str] | None:
    if not polygons:
        return "malformed segmentation", "empty segmentation [] (no polygon)"
    xs, ys = [], []
    for index, polygon in enumerate(polygons):
        if not isinstance(polygon, list) or not all(is_number(v) for v in polygon):
            return "malformed segmentation", (f"segmentation polygon {index} is {short(polygon)}; a polygon is a "
                                              "list of numbers [x1, y1, x2, y2, ...] (finite, no booleans)")
        if len(polygon) < 6 or len(polygon) % 2:
            return "malformed segmentation", (f"segmentation polygon {index} has {len(polygon)} values; a polygon "
                                              "needs x, y pairs of at least 3 points (6 values or more, even)")
        xs += polygon[0::2]
        ys += polygon[1::2]
    if max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height:
        return "segmentation outside image", (f"segmentation polygons span x {min(xs):g}..{max(xs):g}, y "
                                              f"{min(ys):g}..{max(ys):g}, outside its {width:g}x{height:g} image")
    return None


def _check_rle(rle: dict, width: float, height: float) -> tuple[str, str] | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_count(v) for v in size)):
        return "malformed segmentation", f"RLE size {short(size)} (expected [height, width], 2 integers)"
    if tuple(size) != (round(height), round(width)):
        return "malformed segmentation", (f"RLE size {size} is not its image's [height, width] "
                                          f"[{height:g}, {width:g}]")
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None:
            return "malformed segmentation", f"RLE counts {short(counts)} is not a compressed RLE string"
    elif isinstance(counts, list) and all(_is_count(v) for v in counts):
        runs = counts
    else:
        return "malformed segmentation", (f"RLE counts {short(counts)}; expected run lengths (a list of "
                                          "non-negative integers) or a compressed RLE string")
    if any(run < 0 for run in runs) or sum(runs) != size[0] * size[1]:
        return "malformed segmentation", (f"RLE runs add up to {sum(runs)} pixels (or hold a negative run), "
                                          f"not height x width = {size[0] * size[1]}")
    return None


def check_segmentation(segmentation: Any, width: float, height: float) -> tuple[str, str] | None:
    """``(kind, reason)`` of what is wrong with an annotation's ``segmentation`` in a ``width`` x ``height``
    image (``None``: usable). Kinds: ``missing segmentation``, ``malformed segmentation``, ``segmentation
    outside image``."""
    if segmentation is None:
        return "missing segmentation", "no segmentation (data.masks is true: every box needs its mask)"
    if isinstance(segmentation, list):
        return _check_polygons(segmentation, width, height)
    if isinstance(segmentation, dict):
        return _check_rle(segmentation, width, height)
    return "malformed segmentation", (f"segmentation {short(segmentation)}; expected polygons (a list of "
                                      "[x1, y1, x2, y2, ...] lists) or an RLE object {size, counts}")


def _rle(segmentation: list | dict, height: int, width: int) -> dict:
    """One checked ``segmentation`` as one pycocotools RLE (``COCO.annToRLE``'s rules)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: one RLE each, merged
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}


def _decode(rles: list[dict]) -> np.ndarray:
    """``(H, W, N)`` uint8 masks of ``rles`` (pycocotools' ``decode``, without the NumPy 2 deprecation
    warning its compiled module raises on every call)."""
    import warnings

    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rles)


def decode_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """One checked ``segmentation`` as an ``(H, W)`` uint8 mask (0 / 1), as ``COCO.annToMask`` decodes it."""
    return _decode([_rle(segmentation, height, width)])[:, :, 0]


def decode_masks(segmentations: list, height: int, width: int) -> torch.Tensor:
    """An image's checked segmentations as ``(N, H, W)`` uint8 masks, in their order."""
    if not segmentations:
        return torch.zeros(0, height, width, dtype=torch.uint8)
    masks = _decode([_rle(s, height, width) for s in segmentations])  # (H, W, N)
    return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))
