"""Assigning ground-truth boxes to anchors, proposals and points.

Anchor / proposal matching by IoU reuses torchvision's `Matcher` and
`BalancedPositiveNegativeSampler` (Faster R-CNN). `center_sampling_match` is the FCOS label
assignment (Tian et al. 2019, with the centre sampling of the FCOS journal version): a point is
positive for a box when it lies inside the box, within ``radius * stride`` of its centre, and the
box's largest side distance fits the point's level; ties go to the smallest box.
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou

__all__ = ["BalancedPositiveNegativeSampler", "Matcher", "center_sampling_match", "match_boxes"]


def match_boxes(gt_boxes: torch.Tensor, boxes: torch.Tensor, matcher: Matcher) -> torch.Tensor:
    """Index of the matched ground-truth box for each of ``boxes``, by IoU.

    Args:
        gt_boxes: ``(G, 4)``; boxes: ``(N, 4)``.

    Returns:
        ``(N,)`` int64: ``>= 0`` the matched box, ``Matcher.BELOW_LOW_THRESHOLD`` (-1) background,
        ``Matcher.BETWEEN_THRESHOLDS`` (-2) ignored. With no ground truth, everything is background.
    """
    if gt_boxes.numel() == 0:
        return torch.full((boxes.shape[0],), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=boxes.device)
    return matcher(box_iou(gt_boxes, boxes))


def center_sampling_match(points: torch.Tensor, strides: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                          gt_boxes: torch.Tensor, radius: float = 1.5) -> torch.Tensor:
    """FCOS assignment of ground-truth boxes to points.

    Args:
        points: ``(P, 2)`` location centres (x, y) of every pyramid level, concatenated.
        strides: ``(P,)`` stride of each point's level.
        lower, upper: ``(P,)`` range of ``max(l, t, r, b)`` a box may have to be learnt at that level.
        gt_boxes: ``(G, 4)`` boxes of one image.
        radius: centre-sampling radius in strides.

    Returns:
        ``(P,)`` int64: index of the assigned box, or -1 (background).
    """
    if gt_boxes.numel() == 0:
        return torch.full((points.shape[0],), -1, dtype=torch.int64, device=points.device)
    centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (G, 2)
    near = ((points[:, None, :] - centers[None]).abs().amax(dim=2) < radius * strides[:, None])  # (P, G)
    x, y = points[:, 0:1], points[:, 1:2]
    distances = torch.stack([x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=2)
    inside = distances.amin(dim=2) > 0
    reach = distances.amax(dim=2)
    fits = (reach > lower[:, None]) & (reach < upper[:, None])
    match = near & inside & fits  # (P, G)
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    cost = torch.where(match, areas[None, :], torch.full_like(areas, float("inf"))[None, :])
    best, index = cost.min(dim=1)
    index[torch.isinf(best)] = -1
    return index
