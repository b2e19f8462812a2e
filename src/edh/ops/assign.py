"""Task-aligned label assignment (TOOD) and distribution focal loss (GFL) helpers, batched, pure torch.

Task-aligned assignment: Feng, Zhong, Gao, Scott, Huang, "TOOD: Task-aligned One-stage Object
Detection", ICCV 2021 (arXiv:2108.07755), as YOLOv8 uses it. For every ground-truth box and every
anchor point inside it, the alignment ``t = s^alpha * u^beta`` combines the predicted probability
``s`` of the box's class and the overlap ``u`` (complete IoU, clamped at 0) of the predicted box
with it. Each box takes its ``topk`` best-aligned points inside it; a point taken by several boxes
keeps the one it overlaps most. The soft class target of a positive point is its alignment
normalised per box so that the box's best point gets that point's overlap:
``t / max_t * max_u`` (the classification target is then an IoU-aware score).

Distribution focal loss: Li et al., "Generalized Focal Loss", NeurIPS 2020 (arXiv:2006.04388).
Each box side is a distance in strides, predicted as a distribution over ``reg_max`` bins
``0..reg_max-1``; the distance is the distribution's expectation, and the loss is the cross-entropy
towards the two bins around the target, weighted by closeness ("two-hot").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss

__all__ = ["Assignment", "pad_boxes", "task_aligned_assign", "dfl_decode", "box_to_distances",
           "distances_to_box", "distribution_focal_loss"]


@dataclass(frozen=True)
class Assignment:
    """What `task_aligned_assign` gives every anchor point of every image.

    Attributes:
        foreground: ``(B, P)`` True where the point is assigned to a box.
        gt_index: ``(B, P)`` index of that box among the image's boxes (0 for background points).
        labels: ``(B, P)`` class index ``0..K-1`` of that box (0 for background points).
        boxes: ``(B, P, 4)`` xyxy of that box (the first box's for background points).
        scores: ``(B, P, K)`` soft classification targets: the normalised alignment at the box's
            class, 0 elsewhere and on background points.
    """

    foreground: torch.Tensor
    gt_index: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor


def pad_boxes(boxes: list[torch.Tensor], labels: list[torch.Tensor], device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image boxes ``[(N_i, 4)]`` and labels ``[(N_i,)]`` -> ``(B, M, 4)``, ``(B, M)`` and a
    ``(B, M)`` mask of the real entries, ``M = max N_i`` (padding: zero boxes, label 0)."""
    count = max((len(b) for b in boxes), default=0)
    batch = len(boxes)
    device = device if device is not None else (boxes[0].device if boxes else "cpu")
    padded = torch.zeros(batch, count, 4, device=device)
    classes = torch.zeros(batch, count, dtype=torch.long, device=device)
    mask = torch.zeros(batch, count, dtype=torch.bool, device=device)
    for image, (b, l) in enumerate(zip(boxes, labels)):
        padded[image, :len(b)] = b.to(device=device, dtype=padded.dtype)
        classes[image, :len(l)] = l.to(device=device, dtype=torch.long)
        mask[image, :len(b)] = True
    return padded, classes, mask


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """``(B, M, P)``: point ``p`` ``(P, 2)`` lies strictly inside box ``m`` of ``(B, M, 4)`` xyxy."""
    top_left = points[None, None] - boxes[..., None, :2]  # (B, M, P, 2)
    bottom_right = boxes[..., None, 2:] - points[None, None]
    return torch.cat([top_left, bottom_right], dim=-1).amin(-1) > eps


@torch.no_grad()
def task_aligned_assign(scores: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, gt_boxes: torch.Tensor,
                        gt_labels: torch.Tensor, gt_mask: torch.Tensor, topk: int = 10, alpha: float = 0.5,
                        beta: float = 6.0, eps: float = 1e-9) -> Assignment:
    """Assign anchor points to ground-truth boxes by task alignment (see the module docstring).

    Args:
        scores: ``(B, P, K)`` predicted class probabilities (after the sigmoid).
        boxes: ``(B, P, 4)`` predicted boxes, xyxy in input pixels.
        points: ``(P, 2)`` anchor points (x, y) in input pixels.
        gt_boxes: ``(B, M, 4)`` ground-truth boxes xyxy (padded, `pad_boxes`).
        gt_labels: ``(B, M)`` their class indices ``0..K-1``.
        gt_mask: ``(B, M)`` True for real boxes, False for padding.
        topk: points each box takes (among those inside it).
        alpha, beta: exponents of the class probability and of the overlap in the alignment.

    Returns:
        the `Assignment` of every point.
    """
    batch, count, classes = scores.shape[0], gt_boxes.shape[1], scores.shape[-1]
    locations = points.shape[0]
    if count == 0:
        zeros = torch.zeros(batch, locations, dtype=torch.long, device=scores.device)
        return Assignment(zeros.bool(), zeros, zeros, torch.zeros_like(boxes), torch.zeros_like(scores))
    candidates = points_in_boxes(points, gt_boxes) & gt_mask[..., None]  # (B, M, P)
    image, box, location = torch.where(candidates)
    overlaps = torch.zeros(batch, count, locations, dtype=boxes.dtype, device=boxes.device)
    overlaps[image, box, location] = (1 - complete_box_iou_loss(gt_boxes[image, box], boxes[image, location],
                                                                reduction="none")).clamp(min=0).to(boxes.dtype)
    class_scores = scores.transpose(1, 2).gather(1, gt_labels[..., None].expand(-1, -1, locations))  # (B, M, P)
    alignment = class_scores.pow(alpha) * overlaps.pow(beta) * candidates

    best = alignment.topk(min(topk, locations), dim=-1).indices  # (B, M, k)
    chosen = torch.zeros_like(candidates).scatter_(-1, best, True)
    positive = chosen & candidates  # (B, M, P)
    shared = positive.sum(1) > 1  # (B, P): points several boxes took keep the box they overlap most
    closest = F.one_hot(overlaps.argmax(1), count).transpose(1, 2).bool()  # (B, M, P)
    positive = torch.where(shared[:, None], closest, positive)

    foreground = positive.any(1)  # (B, P)
    gt_index = positive.to(torch.uint8).argmax(1)  # (B, P)
    labels = gt_labels.gather(1, gt_index)  # (B, P)
    assigned = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))  # (B, P, 4)

    alignment = alignment * positive
    best_alignment = alignment.amax(-1, keepdim=True)  # (B, M, 1)
    best_overlap = (overlaps * positive).amax(-1, keepdim=True)
    normalised = (alignment * best_overlap / (best_alignment + eps)).amax(1)  # (B, P)
    targets = F.one_hot(labels, classes).to(scores.dtype) * (normalised * foreground)[..., None]
    return Assignment(foreground, gt_index, labels, assigned, targets)


# ---- distribution focal loss ------------------------------------------------------------------------
def dfl_decode(logits: torch.Tensor, reg_max: int, bins: torch.Tensor | None = None) -> torch.Tensor:
    """Side distances in strides ``(..., 4)``: the expectation of each side's softmax over
    ``reg_max`` bins, from logits ``(..., 4 * reg_max)`` (side-major: left, top, right, bottom, each
    ``reg_max`` bins). ``bins`` ``(reg_max,)``: the bins' values (default ``0..reg_max-1``)."""
    probabilities = logits.unflatten(-1, (4, reg_max)).softmax(-1)  # (..., 4, reg_max)
    if bins is None:
        bins = torch.arange(reg_max, device=probabilities.device)
    return probabilities @ bins.to(probabilities.dtype)  # (..., 4)


def distances_to_box(distances: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Side distances in strides ``(..., P, 4)`` (left, top, right, bottom) from points ``(P, 2)``
    with strides ``(P,)`` -> boxes ``(..., P, 4)`` xyxy in pixels."""
    scaled = distances * strides[:, None]
    return torch.cat([points - scaled[..., :2], points + scaled[..., 2:]], dim=-1)


def box_to_distances(boxes: torch.Tensor, points: torch.Tensor, strides: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Boxes ``(N, 4)`` xyxy -> their side distances from points ``(N, 2)`` in strides ``(N,)``,
    clamped to ``[0, reg_max - 1 - 0.01]`` (the last bin's upper neighbour must exist): DFL targets."""
    distances = torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], dim=1) / strides[:, None]
    return distances.clamp(0, reg_max - 1 - 0.01)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of bin logits ``(N, reg_max)`` towards the two bins around each target
    distance ``(N,)`` (in ``[0, reg_max - 1)``), weighted by closeness -> ``(N,)``."""
    left = target.long()
    right_weight = target - left
    return (F.cross_entropy(logits, left, reduction="none") * (1 - right_weight)
            + F.cross_entropy(logits, left + 1, reduction="none") * right_weight)
