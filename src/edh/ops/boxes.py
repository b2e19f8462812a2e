"""Box arithmetic for the detection heads, on top of ``torchvision.ops``.

Boxes are ``(N, 4)`` float tensors in absolute pixel ``(x1, y1, x2, y2)`` of the model input.
Encoding / decoding reuses torchvision's `BoxCoder` (Faster R-CNN deltas) and `BoxLinearCoder`
(FCOS distances); NMS, IoU and clipping are ``torchvision.ops``. This file adds what torchvision
leaves to its callers: target checks with errors that name the image and the box, per-image
target lists, and the class-wise post-processing shared by the heads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder
from torchvision.ops import batched_nms, box_convert, box_iou, clip_boxes_to_image, remove_small_boxes

__all__ = ["BBOX_XFORM_CLIP", "BoxCoder", "BoxLinearCoder", "DetectionTargets", "box_iou", "check_targets",
           "filter_detections", "to_xywh", "split_targets"]

BBOX_XFORM_CLIP = math.log(1000.0 / 16)  # largest log-size delta a decoded box may use (as torchvision)

DetectionTargets = list[dict[str, torch.Tensor]]  # per image: {"boxes": (N, 4) xyxy, "labels": (N,) int64}


def split_targets(targets: Any, where: str = "targets") -> DetectionTargets:
    """Per-image ``{"boxes", "labels"}`` dicts from a batch's targets.

    Accepts a batch's target dict ``{"boxes": [(N_i, 4)], "labels": [(N_i,)], ...}`` (what
    edh's detection datasets collate to) or a list of per-image dicts (torchvision's layout).
    """
    if isinstance(targets, dict):
        missing = [k for k in ("boxes", "labels") if k not in targets]
        if missing:
            raise KeyError(missing[0])
        boxes, labels = targets["boxes"], targets["labels"]
        if isinstance(boxes, torch.Tensor) and boxes.ndim == 3:  # (B, N, 4) of a fixed-count batch
            boxes, labels = list(boxes), list(labels)
        if len(boxes) != len(labels):
            raise ValueError(f"{where}: {len(boxes)} box tensors but {len(labels)} label tensors; give one of each "
                             "per image")
        return [{"boxes": b, "labels": l} for b, l in zip(boxes, labels)]
    if isinstance(targets, (list, tuple)) and all(isinstance(t, dict) for t in targets):
        return list(targets)
    raise TypeError(f"{where}: detection targets must be a dict with 'boxes' and 'labels' lists or a list of "
                    f"per-image dicts, got {type(targets).__name__}")


def check_targets(targets: DetectionTargets, num_classes: int, batch_size: int, where: str = "targets") -> DetectionTargets:
    """Validate per-image targets; return them as float boxes and int64 labels.

    Raises:
        ValueError: naming the image and the box, for a box that is not ``(N, 4)``, has zero or
            negative width / height, is not finite, or a label outside ``1..num_classes``.
    """
    if len(targets) != batch_size:
        raise ValueError(f"{where}: {len(targets)} target entries for a batch of {batch_size} images")
    clean = []
    for index, target in enumerate(targets):
        boxes = torch.as_tensor(target["boxes"]).float()
        labels = torch.as_tensor(target["labels"]).long()
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"{where}: image {index} has boxes shaped {tuple(boxes.shape)}; expected (N, 4) "
                             "x1, y1, x2, y2")
        if labels.shape != boxes.shape[:1]:
            raise ValueError(f"{where}: image {index} has {boxes.shape[0]} boxes but labels shaped "
                             f"{tuple(labels.shape)}")
        if not torch.isfinite(boxes).all():
            raise ValueError(f"{where}: image {index} has a box with NaN or Inf coordinates")
        bad = torch.where((boxes[:, 2:] <= boxes[:, :2]).any(dim=1))[0]
        if len(bad):
            box = [round(v, 2) for v in boxes[bad[0]].tolist()]
            raise ValueError(f"{where}: image {index}, box {int(bad[0])} {box} has zero or negative width or "
                             "height; boxes are (x1, y1, x2, y2) with x2 > x1 and y2 > y1")
        wrong = torch.where((labels < 1) | (labels > num_classes))[0]
        if len(wrong):
            raise ValueError(f"{where}: image {index}, box {int(wrong[0])} has label {int(labels[wrong[0]])}, "
                             f"outside 1..{num_classes}; detection labels are 1..num_classes with 0 kept for "
                             "the background (torchvision's convention)")
        clean.append({"boxes": boxes, "labels": labels})
    return clean


def filter_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, image_size: tuple[int, int],
                      score_thresh: float, nms_thresh: float, max_detections: int,
                      min_size: float = 1e-2) -> dict[str, torch.Tensor]:
    """Candidates of one image -> final detections: clip, drop low scores and tiny boxes, class-wise NMS.

    Args:
        boxes: ``(K, 4)`` candidate boxes; scores ``(K,)``; labels ``(K,)`` class indices.
        image_size: ``(H, W)`` boxes are clipped to.

    Returns:
        ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` sorted by decreasing score, D <= max_detections.
    """
    boxes = clip_boxes_to_image(boxes, image_size)
    keep = torch.where(scores > score_thresh)[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = remove_small_boxes(boxes, min_size=min_size)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` xyxy -> COCO's ``(x, y, width, height)``."""
    return box_convert(boxes, "xyxy", "xywh")
