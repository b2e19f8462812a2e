"""Sliding-window inference: a model run on overlapping tiles of a large image, its outputs stitched.

`tiled_forward` cuts ``(B, C, H, W)`` images into windows of ``tile`` pixels that overlap by a
fraction ``overlap`` (the last window of each row and column flush with the border), runs the
model on a few tiles at a time and stitches each head's output the way the head declares
(``Head.tiling``):

- ``"blend"`` outputs (per-pixel maps at the input's resolution, e.g. segmentation logits) are
  accumulated into one output buffer per head, each tile weighted by `blend_window`, and divided by
  the summed weights at the end. The buffers ``(B, K, H, W)`` and the summed weights ``(H, W)`` are
  the only full-size tensors: memory beyond them is that of ``tiles_per_batch`` tiles, whatever the
  image's size.
- ``"boxes"`` heads (detection) predict on each tile (``Head.predict``: per tile ``boxes`` xyxy in
  tile pixels, ``scores``, ``labels``); the boxes are shifted to image pixels, a box cut by an
  inner tile border is dropped when it lies in the strip the neighbouring tile also sees (that
  tile sees more of the object), and ``Head.merge_tiles`` merges the rest across tile borders
  (`merge_detections`: class-wise NMS or weighted box fusion, then the head's ``max_detections``
  for the whole image). Their entry in the result is a `MergedPredictions`: the head's
  predictions, not raw outputs (`predictions_of` reads either).

An image no larger than a tile runs whole, as it is, and gives exactly the untiled result.

Example:
    >>> outputs = tiled_forward(model, images, model.tasks(), tile=256, overlap=0.25)
    >>> outputs["mask"].shape  # (B, K, H, W), as model(images)["mask"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

TILINGS = ("blend", "boxes")
MERGES = ("nms", "wbf")
BOX_KEYS = ("boxes", "scores", "labels")
EDGE = 1.0  # pixels: a box this close to a tile's inner border is taken as cut by it


@dataclass
class MergedPredictions:
    """What `tiled_forward` gives for a ``"boxes"`` head: its ``predict`` result, one entry per image
    (``{"boxes" (D, 4) in image pixels, "scores" (D,), "labels" (D,)}``), merged over the tiles."""

    predictions: list[dict[str, torch.Tensor]]


def predictions_of(head: Any, outputs: Any, **meta: Any) -> Any:
    """``head.predict(outputs, **meta)``, or the predictions themselves when ``outputs`` is a
    `MergedPredictions` (a ``"boxes"`` head run on tiles)."""
    if isinstance(outputs, MergedPredictions):
        return outputs.predictions
    return head.predict(outputs, **meta)


def window_starts(length: int, tile: int, overlap: float = 0.25) -> list[int]:
    """Start offsets of windows of ``tile`` pixels covering ``length`` pixels.

    Windows step by ``floor(tile * (1 - overlap))`` (at least 1); the last one ends at ``length``
    exactly (it may overlap its neighbour by more than ``overlap``). One window at 0 when
    ``length <= tile``.
    """
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    return [*range(0, length - tile, step), length - tile]


def ramp(length: int, margin: int) -> torch.Tensor:
    """``(length,)`` weights: 1 in the middle, falling linearly to ``0.5 / margin`` over the
    ``margin`` pixels at each end (all ones when ``margin`` is 0). Never 0, so a pixel that only
    one tile covers (the image border) keeps its value after normalisation."""
    if margin <= 0:
        return torch.ones(length)
    position = torch.arange(length, dtype=torch.float32) + 0.5
    return (torch.minimum(position, length - position) / margin).clamp(max=1.0)


def blend_window(height: int, width: int, margin: tuple[int, int]) -> torch.Tensor:
    """The weight of each pixel of a ``height x width`` tile: the outer product of two `ramp`s,
    ``margin = (rows, columns)`` wide (the tiles' nominal overlap). Shape ``(height, width)``.

    A linear ramp rather than a Gaussian (nnU-Net's): where two neighbouring tiles overlap by the
    nominal margin their ramps sum to a constant, so the stitched map cross-fades linearly from
    one tile to the next, and each tile's centre, the pixels that saw the most context, is used
    as it is instead of being blended everywhere; nor does it need a floor against dividing by
    nearly zero at the image border, since its smallest weight is ``0.5 / margin``.
    """
    return ramp(height, margin[0])[:, None] * ramp(width, margin[1])[None, :]


def is_dense(head: Any) -> bool:
    """Whether ``head``'s raw output is a per-pixel map at the input's resolution (``tiling`` ``"blend"``):
    tiles of it are blended, and a map of a resized image can be up-sampled back to the image's size."""
    return getattr(head, "tiling", None) == "blend"


def merges_boxes(head: Any) -> bool:
    """Whether ``head`` predicts boxes that tiles merge (``tiling`` ``"boxes"``): its ``predict`` runs per
    tile, and its caps hold per tile and again for the whole image."""
    return getattr(head, "tiling", None) == "boxes"


def untileable(tasks: dict[str, Any]) -> list[str]:
    """The names of the heads in ``tasks`` that cannot run on tiles (no known ``tiling``)."""
    return [name for name, head in tasks.items() if getattr(head, "tiling", None) not in TILINGS]


def check_tileable(tasks: dict[str, Any], option: str = "--tile") -> None:
    """Raise ``ValueError`` naming every head of ``tasks`` that cannot run on tiles, and what to do."""
    bad = untileable(tasks)
    if not bad:
        return
    tileable = [name for name in tasks if name not in bad]
    described = ", ".join(f"{name!r} ({type(tasks[name]).__name__}, tiling "
                          f"{getattr(tasks[name], 'tiling', None)!r})" for name in bad)
    keep = f", or keep only the heads that tile with --heads {' '.join(tileable)}" if tileable else ""
    raise ValueError(
        f"{option} runs the model on overlapping tiles and stitches each head's outputs as its Head.tiling says, "
        f"but head(s) {described} cannot be stitched (tilings edh knows: {', '.join(TILINGS)}). Drop {option} to "
        f"run whole images{keep}"
    )


def _tile_size(tile: int | tuple[int, int]) -> tuple[int, int]:
    size = (tile, tile) if isinstance(tile, int) else tuple(int(v) for v in tile)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"the tile size must be one or two positive whole numbers of pixels, got {tile!r}")
    return size


def tiled_forward(model: Callable[..., dict[str, Any]], images: torch.Tensor, tasks: dict[str, Any],
                  tile: int | tuple[int, int] = 512, overlap: float = 0.25, tiles_per_batch: int = 4,
                  progress: Callable[[Iterable, int], Iterable] | None = None, merge: str = "nms",
                  predict_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``model(images)`` computed tile by tile: the same output dict, stitched.

    Args:
        model: called with a batch of tiles ``(n * B, C, tile_h, tile_w)``; returns ``{head: output}``.
        images: ``(B, C, H, W)``.
        tasks: ``{head name: head}`` (``Model.tasks()``); each head's ``tiling`` says how its output
            is stitched. Any head without one is a ``ValueError`` before the model runs.
        tile: the window's side in pixels, or ``(height, width)``; a side longer than the image is
            cut to the image's.
        overlap: the fraction of a window shared with its neighbour, in ``[0, 1)``. For ``"boxes"``
            heads make it at least an object's size, so that every object lies whole in some tile.
        tiles_per_batch: windows run in one forward (each holds ``B`` tiles): the memory bound.
        progress: wraps the iterable of tile batches (with their count), e.g. a progress bar.
        merge: how ``"boxes"`` heads merge detections across tiles: ``"nms"`` or ``"wbf"`` (`MERGES`).
        predict_options: keyword arguments for the ``predict`` of ``"boxes"`` heads on each tile.

    Returns:
        ``{head: (B, K, H, W)}`` float32 maps for ``"blend"`` heads and ``{head: MergedPredictions}``
        for ``"boxes"`` heads; an image no larger than one tile gives ``model(images)`` (raw outputs).
    """
    check_tileable(tasks)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"the tile overlap is a fraction of the tile in [0, 1), got {overlap}")
    if tiles_per_batch < 1:
        raise ValueError(f"tiles_per_batch must be at least 1, got {tiles_per_batch}")
    if merge not in MERGES:
        raise ValueError(f"merge is how detections of neighbouring tiles are merged, one of {', '.join(MERGES)}; "
                         f"got {merge!r}")
    batch, _, height, width = images.shape  # (B, C, H, W)
    tile_h, tile_w = _tile_size(tile)
    tile_h, tile_w = min(tile_h, height), min(tile_w, width)
    if (tile_h, tile_w) == (height, width):
        return model(images)
    rows, columns = window_starts(height, tile_h, overlap), window_starts(width, tile_w, overlap)
    margin = tuple(size - (starts[1] - starts[0]) if len(starts) > 1 else 0
                   for size, starts in ((tile_h, rows), (tile_w, columns)))
    windows = [(top, left) for top in rows for left in columns]
    blended = [name for name, head in tasks.items() if is_dense(head)]
    weight = blend_window(tile_h, tile_w, margin).to(images.device)  # (tile_h, tile_w)
    coverage = torch.zeros(height, width, device=images.device) if blended else None  # (H, W): summed weights
    if coverage is not None:
        for top, left in windows:
            coverage[top:top + tile_h, left:left + tile_w] += weight
    sums: dict[str, torch.Tensor] = {}  # head -> (B, K, H, W) weighted sum of its tiles' outputs
    found: dict[str, list[list[dict[str, torch.Tensor]]]] = {  # head -> per image, its tiles' detections
        name: [[] for _ in range(batch)] for name in tasks if name not in blended}
    chunks = [windows[i:i + tiles_per_batch] for i in range(0, len(windows), tiles_per_batch)]
    for chunk in (progress(chunks, len(chunks)) if progress is not None else chunks):
        tiles = torch.cat([images[:, :, top:top + tile_h, left:left + tile_w] for top, left in chunk])  # (n*B, C, th, tw)
        outputs = model(tiles)
        for name in blended:
            _blend_into(sums, name, outputs[name], chunk, batch, (tile_h, tile_w), (height, width), weight)
        for name in found:
            detections = tasks[name].predict(outputs[name], input_size=(tile_h, tile_w), inputs=tiles,
                                             **(predict_options or {}))
            _collect_boxes(found[name], name, detections, chunk, batch, (tile_h, tile_w), (height, width), margin)
    for total in sums.values():
        total.div_(coverage)  # in place: no second full-size tensor
    merged = {name: MergedPredictions([tasks[name].merge_tiles(join_detections(pieces, images.device), merge)
                                       for pieces in per_image]) for name, per_image in found.items()}
    return {**sums, **merged}


def _blend_into(sums: dict[str, torch.Tensor], name: str, value: Any, chunk: list[tuple[int, int]], batch: int,
                tile: tuple[int, int], size: tuple[int, int], weight: torch.Tensor) -> None:
    """Add one batch of tiles' maps of head ``name``, weighted, into its full-size sum."""
    tile_h, tile_w = tile
    expected = (len(chunk) * batch, tile_h, tile_w)
    if not isinstance(value, torch.Tensor) or value.ndim != 4 or (value.shape[0], *value.shape[-2:]) != expected:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"head {name!r} declares tiling 'blend' but gave {shape} for {expected[0]} tiles of "
            f"{tile_h}x{tile_w}: a blended output is a per-pixel map (B, K, H, W) at the input's resolution"
        )
    value = value.float().unflatten(0, (len(chunk), batch))  # (n, B, K, th, tw)
    if name not in sums:
        sums[name] = torch.zeros(batch, value.shape[2], *size, device=value.device)
    for index, (top, left) in enumerate(chunk):
        sums[name][:, :, top:top + tile_h, left:left + tile_w].addcmul_(value[index], weight)


def _collect_boxes(per_image: list[list[dict[str, torch.Tensor]]], name: str, detections: Any,
                   chunk: list[tuple[int, int]], batch: int, tile: tuple[int, int], size: tuple[int, int],
                   margin: tuple[int, int]) -> None:
    """Shift one batch of tiles' detections of head ``name`` to image pixels, drop the cut ones that a
    neighbouring tile sees whole, and file them under their image."""
    count = len(chunk) * batch
    if not isinstance(detections, (list, tuple)) or len(detections) != count or \
            not all(isinstance(d, dict) and set(BOX_KEYS) <= set(d) for d in detections):
        raise ValueError(f"head {name!r} declares tiling 'boxes' but its predict gave "
                         f"{type(detections).__name__} for {count} tiles: a 'boxes' head predicts a list with one "
                         f"{{{', '.join(BOX_KEYS)}}} dict per image")
    for index, found in enumerate(detections):
        extra = sorted(set(found) - set(BOX_KEYS))
        if extra:
            raise ValueError(f"head {name!r} declares tiling 'boxes' but its predictions also carry {extra}, which "
                             "box merging cannot stitch; give the head tiling None (or its own merge_tiles)")
        top, left = chunk[index // batch]
        keep = ~cut_by_border(found["boxes"], (top, left, *tile), size, margin)
        shift = found["boxes"].new_tensor([left, top, left, top])
        per_image[index % batch].append({"boxes": found["boxes"][keep] + shift, "scores": found["scores"][keep],
                                         "labels": found["labels"][keep]})


def cut_by_border(boxes: torch.Tensor, window: tuple[int, int, int, int], size: tuple[int, int],
                  margin: tuple[int, int]) -> torch.Tensor:
    """``(D,)`` True for each box (tile pixels, ``(D, 4)`` xyxy) that touches an inner border of its
    tile (``window``: top, left, height, width, in an image of ``size`` ``(H, W)``) and lies within the
    ``margin`` ``(rows, columns)`` pixels along it: the neighbouring tile covers that strip and sees
    more of the object, so this cut-off part is dropped. Borders on the image's edge cut nothing."""
    top, left, tile_h, tile_w = window
    x1, y1, x2, y2 = boxes.unbind(-1)
    cut = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if margin[1] > 0:
        if left > 0:
            cut |= (x1 <= EDGE) & (x2 <= margin[1])
        if left + tile_w < size[1]:
            cut |= (x2 >= tile_w - EDGE) & (x1 >= tile_w - margin[1])
    if margin[0] > 0:
        if top > 0:
            cut |= (y1 <= EDGE) & (y2 <= margin[0])
        if top + tile_h < size[0]:
            cut |= (y2 >= tile_h - EDGE) & (y1 >= tile_h - margin[0])
    return cut


def join_detections(pieces: list[dict[str, torch.Tensor]], device: Any = None) -> dict[str, torch.Tensor]:
    """One ``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}`` of several (an image's tiles)."""
    if not pieces:
        return {"boxes": torch.zeros(0, 4, device=device), "scores": torch.zeros(0, device=device),
                "labels": torch.zeros(0, dtype=torch.int64, device=device)}
    return {key: torch.cat([piece[key] for piece in pieces]) for key in BOX_KEYS}


def merge_detections(found: dict[str, torch.Tensor], merge: str = "nms", iou: float = 0.5,
                     max_detections: int | None = None) -> dict[str, torch.Tensor]:
    """Merge one image's detections gathered from overlapping tiles, best first.

    Args:
        found: ``{"boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,)}`` in image pixels.
        merge: ``"nms"``: class-wise NMS (``torchvision.ops.batched_nms``) keeps the best box of each
            group overlapping by more than ``iou``; ``"wbf"``: `weighted_box_fusion` averages them.
        iou: the IoU above which two boxes of one class are the same object.
        max_detections: how many to keep over the whole image (None: all).
    """
    from torchvision.ops import batched_nms

    if merge not in MERGES:
        raise ValueError(f"merge is one of {', '.join(MERGES)}, got {merge!r}")
    boxes, scores, labels = found["boxes"].float(), found["scores"].float(), found["labels"]
    if merge == "nms":
        keep = batched_nms(boxes, scores, labels, iou)  # best first
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    else:
        boxes, scores, labels = weighted_box_fusion(boxes, scores, labels, iou)
    return {"boxes": boxes[:max_detections], "scores": scores[:max_detections], "labels": labels[:max_detections]}


def weighted_box_fusion(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                        iou: float = 0.55) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted box fusion (Solovyev, Wang and Gabruseva 2019, "Weighted boxes fusion: ensembling boxes
    from different object detection models"), for one model's boxes from overlapping tiles.

    Per class, boxes in decreasing score order join the first fused box they overlap by more than
    ``iou`` (else start one); a fused box is the score-weighted mean of its members' corners and
    its score their mean score (the paper's rescaling by the number of models is 1 for one model).
    Unlike NMS, every box of a group moves the result. Written here rather than taken from
    ``ensemble-boxes`` (numpy, boxes normalised to [0, 1], no release since 2022).

    Args:
        boxes: ``(D, 4)`` xyxy. scores: ``(D,)``. labels: ``(D,)``.

    Returns:
        ``(boxes (F, 4), scores (F,), labels (F,))``, best first.
    """
    from torchvision.ops import box_iou

    fused_boxes, fused_scores, fused_labels = [], [], []
    for label in labels.unique().tolist():
        rows = torch.where(labels == label)[0]
        rows = rows[scores[rows].argsort(descending=True, stable=True)]
        weighted = torch.zeros(0, 4, dtype=boxes.dtype, device=boxes.device)  # (F, 4) sum of score * box
        totals = torch.zeros(0, dtype=scores.dtype, device=scores.device)  # (F,) sum of scores
        counts = torch.zeros(0, dtype=scores.dtype, device=scores.device)  # (F,) members
        for row in rows.tolist():
            box, score = boxes[row], scores[row]
            if len(totals):
                overlaps = box_iou(box[None], weighted / totals[:, None])[0]  # (F,)
                best = int(overlaps.argmax())
                if overlaps[best] > iou:
                    weighted[best] += score * box
                    totals[best] += score
                    counts[best] += 1
                    continue
            weighted = torch.cat([weighted, (score * box)[None]])
            totals, counts = torch.cat([totals, score[None]]), torch.cat([counts, counts.new_ones(1)])
        fused_boxes.append(weighted / totals[:, None].clamp(min=torch.finfo(totals.dtype).tiny))
        fused_scores.append(totals / counts)
        fused_labels.append(torch.full((len(totals),), label, dtype=labels.dtype, device=labels.device))
    if not fused_boxes:
        return boxes[:0], scores[:0], labels[:0]
    boxes, scores, labels = torch.cat(fused_boxes), torch.cat(fused_scores), torch.cat(fused_labels)
    order = scores.argsort(descending=True, stable=True)
    return boxes[order], scores[order], labels[order]
