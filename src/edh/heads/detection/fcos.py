"""``fcos``: the FCOS one-stage, anchor-free detection head (registered as ``yolo`` before edh 0.2).

FCOS: Tian, Shen, Chen, He, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019
(arXiv:1904.01355), with the centre sampling and normalised regression of its journal version
("FCOS: A Simple and Strong Anchor-free Object Detector", TPAMI 2021, arXiv:2006.09214).

Every location of every pyramid level predicts, through two decoupled towers shared by all
levels, per-class scores (classification branch) and the distances to the four sides of its box
plus a centre-ness logit (box branch). Label assignment: `edh.ops.matching.center_sampling_match`.
Losses: sigmoid focal loss (classes), GIoU loss (boxes), BCE (centre-ness), each averaged over the
positive locations. Post-processing (`FCOSHead.postprocess`, batched and traceable: eager ``predict``
and an ONNX graph exported with ``--nms`` run the same code): score = sqrt(class probability x
centre-ness), the best ``topk_candidates`` above ``score_thresh``, class-wise NMS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from edh.core.features import FeatureSpec
from edh.heads.detection.one_stage import OneStageHead, chosen_levels
from edh.ops.anchors import grid_points
from edh.ops.matching import center_sampling_match
from edh.core.registry import register_head


@dataclass(frozen=True)
class PointGrid:
    """The locations of the levels a head reads, concatenated: centres ``(P, 2)`` (x, y), and each
    location's stride and the range of box sizes it learns (``lower`` / ``upper``, ``(P,)``)."""

    points: torch.Tensor
    strides: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


class Tower(nn.Module):
    """``num_convs`` x (3x3 conv -> norm -> ReLU), the convs shared by every pyramid level.

    ``norm``: ``group`` (GroupNorm, shared, as FCOS), ``batch`` (one BatchNorm per level, as
    EfficientDet's shared heads: levels have different statistics, so one running mean would fit
    none of them in eval) or ``none``.

    Shapes: ``(B, width, H, W)`` of level ``level`` -> the same.
    """

    def __init__(self, width: int, num_convs: int, norm: str, num_levels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1, bias=norm == "none")
                                    for _ in range(num_convs)])
        groups = max(1, math.gcd(32, width // 8))  # >= 8 channels per group
        if norm == "group":
            self.norms = nn.ModuleList([nn.GroupNorm(groups, width) for _ in range(num_convs)])
        elif norm == "batch":
            self.norms = nn.ModuleList([nn.ModuleList([nn.BatchNorm2d(width) for _ in range(num_levels)])
                                        for _ in range(num_convs)])
        else:
            self.norms = nn.ModuleList([nn.Identity() for _ in range(num_convs)])
        self.per_level = norm == "batch"
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm[level](conv(x)) if self.per_level else norm(conv(x)), inplace=True)
        return x


@register_head("fcos")
class FCOSHead(OneStageHead):
    """Anchor-free one-stage detection head (FCOS), decoupled classification and box branches.

    Args:
        num_classes, class_names, category_ids, score_thresh, nms_thresh, max_detections: see
            `DetectionHead` (labels ``1..num_classes``).
        levels: which levels of the source pyramid to detect on (default: all).
        width: channels of the towers (default: the source's; levels with other channels get a 1x1
            projection, so the head also sits directly on an encoder without an ``fpn``).
        num_convs: 3x3 conv layers per tower.
        norm: ``group`` (GroupNorm, as FCOS), ``batch`` (a BatchNorm per level, foldable for
            inference; faster on CPU) or ``none``; see `Tower`.
        center_sampling_radius: a location is positive only within this many strides of a box centre.
        size_ranges: per level, the ``[low, high]`` range of a box's largest side distance learnt
            there (default: FCOS's ``[4 s, 8 s]`` with the first level from 0 and the last to infinity).
        topk_candidates: scored (location, class) pairs kept before NMS per image.
        prior_probability: initial foreground probability of the class logits.

    Shapes: ``[(B, C_i, H_i, W_i)]`` -> ``cls_logits`` ``(B, P, num_classes)``, ``box_regression``
    ``(B, P, 4)`` (left, top, right, bottom distances in strides), ``centerness`` ``(B, P)``, over the
    P locations of the chosen levels.
    """

    branches = {
        "cls_tower": "classification branch: shared conv tower",
        "cls_logits": "classification branch: class scores per location",
        "box_tower": "box branch: shared conv tower",
        "bbox_reg": "box branch: distances to the 4 box sides",
        "bbox_ctrness": "box branch: centre-ness",
    }
    function = "one-stage anchor-free detection (FCOS): class scores + box + centre-ness per location, NMS"

    def __init__(self, in_spec: FeatureSpec, num_classes: int, class_names: list[str] | None = None,
                 category_ids: list[int] | None = None, levels: list[int] | None = None, width: int | None = None,
                 num_convs: int = 4, norm: Literal["group", "batch", "none"] = "group",
                 center_sampling_radius: float = 1.5, size_ranges: list[list[float]] | None = None,
                 topk_candidates: int = 1000, prior_probability: float = 0.01, score_thresh: float = 0.2,
                 nms_thresh: float = 0.6, max_detections: int = 100) -> None:
        super().__init__(in_spec, num_classes, class_names, category_ids, score_thresh, nms_thresh, max_detections)
        chosen = chosen_levels(in_spec, levels, "head fcos")
        self.levels = chosen
        self.strides = [in_spec.strides[i] for i in chosen]
        channels = [in_spec.channels[i] for i in chosen]
        width = width or max(channels)
        self.projections = nn.ModuleList([nn.Identity() if c == width else nn.Conv2d(c, width, 1) for c in channels])
        self.cls_tower = Tower(width, num_convs, norm, len(chosen))
        self.box_tower = Tower(width, num_convs, norm, len(chosen))
        self.cls_logits = nn.Conv2d(width, num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(width, 4, 3, padding=1)
        self.bbox_ctrness = nn.Conv2d(width, 1, 3, padding=1)
        for module in (self.cls_logits, self.bbox_reg, self.bbox_ctrness):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))
        if size_ranges is None:
            size_ranges = [[4.0 * s, 8.0 * s] for s in self.strides]
            size_ranges[0][0], size_ranges[-1][1] = 0.0, math.inf
        if len(size_ranges) != len(chosen):
            raise ValueError(f"size_ranges gives {len(size_ranges)} levels but the head reads {len(chosen)}")
        self.size_ranges = [tuple(float(v) for v in r) for r in size_ranges]
        self.center_sampling_radius = center_sampling_radius
        self.topk_candidates = topk_candidates
        self._grids: dict[tuple, PointGrid] = {}

    def _grid(self, sizes: list[tuple[int, int]], device: torch.device) -> PointGrid:
        """The `PointGrid` of levels of these ``(H, W)`` sizes, cached (the last size used)."""
        key = (tuple(sizes), str(device))
        if key not in self._grids:
            points = [grid_points(s, stride, device=device) for s, stride in zip(sizes, self.strides)]
            counts = [len(p) for p in points]
            expand = lambda values: torch.cat([torch.full((c,), float(v), device=device)  # noqa: E731
                                               for c, v in zip(counts, values)])
            self._grids = {key: PointGrid(torch.cat(points), expand(self.strides),
                                          expand([r[0] for r in self.size_ranges]),
                                          expand([r[1] for r in self.size_ranges]))}
        return self._grids[key]

    def forward(self, features: list[torch.Tensor], **context: Any) -> dict[str, Any]:
        maps = [project(features[i]) for project, i in zip(self.projections, self.levels)]
        batch = maps[0].shape[0]
        cls_logits, regression, centerness = [], [], []
        for index, level in enumerate(maps):
            classes, boxes = self.cls_tower(level, index), self.box_tower(level, index)
            cls_logits.append(self.cls_logits(classes).flatten(2))  # (B, K, H*W)
            regression.append(F.relu(self.bbox_reg(boxes)).flatten(2))  # (B, 4, H*W)
            centerness.append(self.bbox_ctrness(boxes).flatten(2))  # (B, 1, H*W)
        size = context.get("input_size") or tuple(s * self.strides[0] for s in maps[0].shape[-2:])
        return {"cls_logits": torch.cat(cls_logits, 2).transpose(1, 2),  # (B, P, K)
                "box_regression": torch.cat(regression, 2).transpose(1, 2),  # (B, P, 4)
                "centerness": torch.cat(centerness, 2).reshape(batch, -1),  # (B, P)
                "grid": self._grid([tuple(m.shape[-2:]) for m in maps], maps[0].device), "image_size": tuple(size)}

    @staticmethod
    def decode(regression: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
        """Distances ``(..., P, 4)`` in strides from points ``(P, 2)`` -> boxes ``(..., P, 4)`` xyxy."""
        distances = regression * strides[:, None]
        return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)

    def loss(self, outputs: dict[str, Any], targets: Any) -> dict[str, torch.Tensor]:
        """``classification`` (focal), ``box`` (GIoU), ``centerness`` (BCE), each per positive location."""
        cls_logits = outputs["cls_logits"]
        batch = cls_logits.shape[0]
        targets = self._checked(targets, batch)
        grid = outputs["grid"]
        points, strides = grid.points, grid.strides
        matched = torch.stack([center_sampling_match(points, strides, grid.lower, grid.upper,
                                                     t["boxes"].to(points.device), self.center_sampling_radius)
                               for t in targets])  # (B, P)
        image, location = torch.where(matched >= 0)
        first = torch.tensor([0] + [len(t["boxes"]) for t in targets], device=points.device).cumsum(0)[:-1]
        which = matched[image, location] + first[image]
        gt_boxes = torch.cat([t["boxes"] for t in targets]).to(points.device)[which]  # (F, 4)
        gt_labels = torch.cat([t["labels"] for t in targets]).to(points.device)[which]
        positives = max(1, len(which))
        class_targets = torch.zeros_like(cls_logits)
        class_targets[image, location, gt_labels - 1] = 1.0
        classification = sigmoid_focal_loss(cls_logits, class_targets, reduction="sum") / positives
        if len(which) == 0:
            zero = outputs["box_regression"].sum() * 0 + outputs["centerness"].sum() * 0
            return {"classification": classification, "box": zero, "centerness": zero}
        where, stride = points[location], strides[location]
        predicted = self.decode(outputs["box_regression"][image, location], where, stride)
        box = generalized_box_iou_loss(predicted, gt_boxes, reduction="sum") / positives
        sides = torch.cat([where - gt_boxes[:, :2], gt_boxes[:, 2:] - where], dim=1)  # (F, 4) l, t, r, b
        left_right, top_bottom = sides[:, [0, 2]], sides[:, [1, 3]]
        target = torch.sqrt((left_right.amin(1) / left_right.amax(1)) * (top_bottom.amin(1) / top_bottom.amax(1)))
        centerness = F.binary_cross_entropy_with_logits(outputs["centerness"][image, location], target,
                                                        reduction="sum") / positives
        return {"classification": classification, "box": box, "centerness": centerness}

    def class_scores(self, outputs: dict[str, Any]) -> torch.Tensor:
        """sqrt(class probability x centre-ness) ``(B, P, K)`` (FCOS's detection score)."""
        return torch.sqrt(outputs["cls_logits"].sigmoid() * outputs["centerness"].sigmoid()[..., None])

    def candidate_boxes(self, outputs: dict[str, Any], location: torch.Tensor) -> torch.Tensor:
        """The decoded boxes ``(B, k, 4)`` of locations ``(B, k)``."""
        grid = outputs["grid"]
        regression = torch.gather(outputs["box_regression"], 1, location[..., None].expand(-1, -1, 4))  # (B, k, 4)
        flat = location.reshape(-1)  # (B k,)
        return self.decode(regression.reshape(-1, 4), grid.points[flat], grid.strides[flat]).reshape(*location.shape, 4)
