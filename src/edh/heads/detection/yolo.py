"""``yolo``: the YOLOv8-style one-stage, anchor-free detection head.

Built from YOLOv8's public architecture description and the papers it draws on: per pyramid level,
two decoupled branches of two 3x3 ``ConvBNSiLU`` and a 1x1 conv (not shared between levels): the
box branch predicts each side's distance from the cell centre as a distribution over ``reg_max``
bins (GFL: Li et al. 2020, arXiv:2006.04388), the class branch one logit per class (no objectness).

- Assignment: task-aligned (TOOD: Feng et al. 2021, arXiv:2108.07755), `edh.ops.assign.task_aligned_assign`.
- Losses: ``classification``, BCE towards the assigner's soft scores, summed and divided by their
  sum; ``box``, CIoU loss (Zheng et al. 2020, arXiv:1911.08287) of each positive point, weighted by
  its target score; ``dfl``, distribution focal loss of the four sides, weighted alike; each times
  YOLOv8's gain (``cls_gain`` 0.5, ``box_gain`` 7.5, ``dfl_gain`` 1.5). Unlike YOLOv8's trainer
  the sum is not multiplied by the batch size (edh's optimisers see a per-batch mean).
- Post-processing (`edh.heads.detection.one_stage.OneStageHead.postprocess`, batched and traceable):
  score = class probability, the best ``topk_candidates`` (location, class) pairs above
  ``score_thresh`` (a box may keep several classes, as YOLOv8's validation), class-wise NMS.

Before edh 0.2 the name ``yolo`` meant the FCOS-style head, now ``fcos``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torchvision.ops import complete_box_iou_loss

from edh.core.features import FeatureSpec
from edh.core.registry import register_head
from edh.heads.detection.one_stage import AnchorPointCache, OneStageHead, chosen_levels
from edh.layers.csp import ConvBNSiLU
from edh.ops.assign import (box_to_distances, distances_to_box, distribution_focal_loss, dfl_decode, pad_boxes,
                            task_aligned_assign)

Gain = Annotated[float, Field(ge=0, le=1000)]


def branch(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 ``ConvBNSiLU`` of ``width`` channels, then a 1x1 conv (with bias) to ``out_channels``.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """
    return nn.Sequential(ConvBNSiLU(in_channels, width, 3), ConvBNSiLU(width, width, 3),
                         nn.Conv2d(width, out_channels, 1))


class PerLevel(nn.ModuleList):
    """One branch per pyramid level (not shared); ``forward`` runs each on its level.

    Shapes: ``[(B, C_i, H_i, W_i)]`` -> ``[(B, out, H_i * W_i)]``.
    """

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [layers(m).flatten(2) for layers, m in zip(self, maps)]


@register_head("yolo")
class YoloHead(OneStageHead):
    """YOLOv8-style decoupled head: DFL boxes, class logits, task-aligned assignment (see the module).

    Args:
        num_classes, class_names, category_ids, score_thresh, nms_thresh, max_detections: see
            `DetectionHead` (labels ``1..num_classes``). Defaults are YOLOv8's validation settings:
            score 0.001, NMS IoU 0.7, 300 detections (YOLOv8 predicts pictures with score 0.25).
        levels: source levels to detect on (default: those of stride 8, 16, 32 when the source has
            them all, else every level).
        reg_max: bins per side distance (distances ``0..reg_max-1`` strides).
        assign_topk, assign_alpha, assign_beta: the task-aligned assigner's points per box and exponents.
        box_gain, cls_gain, dfl_gain: factors of the ``box``, ``classification`` and ``dfl`` losses.
        prior_image_size: the class biases start at ``log(5 / num_classes / (prior_image_size / s)^2)``
            (YOLOv8: about 5 objects per 640-pixel image); the box biases at 1.
        topk_candidates: (location, class) pairs kept per image before NMS.

    Widths (YOLOv8's): box branch ``max(16, C_0 // 4, 4 reg_max)``, class branch
    ``max(C_0, min(num_classes, 100))``, with ``C_0`` the first level's channels.

    Shapes: ``[(B, C_i, H_i, W_i)]`` -> ``cls_logits`` ``(B, P, num_classes)``, ``box_distribution``
    ``(B, P, 4 reg_max)`` (per side, left, top, right, bottom, the logits of its bins), ``grid``
    (`AnchorPoints`: the P cell centres and their strides) and ``image_size``.
    """

    branches = {
        "box_branch": "box branch: 2 conv3x3 + 1x1, per level: side distances as distributions (DFL)",
        "cls_branch": "classification branch: 2 conv3x3 + 1x1, per level: class logits",
    }
    function = "one-stage anchor-free detection (YOLOv8): class scores + DFL box per location, NMS"
    unknown_option_hint = "The FCOS-style head registered as 'yolo' before edh 0.2 is now type: fcos."

    def __init__(self, in_spec: FeatureSpec, num_classes: int, class_names: list[str] | None = None,
                 category_ids: list[int] | None = None, levels: list[int] | None = None,
                 reg_max: Annotated[int, Field(ge=2, le=256)] = 16,
                 assign_topk: Annotated[int, Field(ge=1, le=10000)] = 10,
                 assign_alpha: Annotated[float, Field(ge=0, le=100)] = 0.5,
                 assign_beta: Annotated[float, Field(ge=0, le=100)] = 6.0, box_gain: Gain = 7.5,
                 cls_gain: Gain = 0.5, dfl_gain: Gain = 1.5,
                 prior_image_size: Annotated[int, Field(ge=1, le=65536)] = 640, topk_candidates: int = 1000,
                 score_thresh: float = 0.001, nms_thresh: float = 0.7, max_detections: int = 300) -> None:
        super().__init__(in_spec, num_classes, class_names, category_ids, score_thresh, nms_thresh, max_detections)
        strides = in_spec.strides
        if levels is None and all(s in strides for s in (8, 16, 32)):
            levels = [strides.index(s) for s in (8, 16, 32)]
        self.levels = chosen_levels(in_spec, levels, "head yolo")
        self.strides = [strides[i] for i in self.levels]
        channels = [in_spec.channels[i] for i in self.levels]
        box_width = max(16, channels[0] // 4, 4 * reg_max)
        cls_width = max(channels[0], min(num_classes, 100))
        self.box_branch = PerLevel([branch(c, box_width, 4 * reg_max) for c in channels])
        self.cls_branch = PerLevel([branch(c, cls_width, num_classes) for c in channels])
        with torch.no_grad():
            for box, cls, stride in zip(self.box_branch, self.cls_branch, self.strides):
                box[-1].bias.fill_(1.0)
                cls[-1].bias.fill_(math.log(5 / num_classes / (prior_image_size / stride) ** 2))
        self.reg_max = reg_max
        # the DFL bins 0..reg_max-1: constant (never trained, read detached), a parameter only so that the
        # count matches YOLOv8's published one, whose DFL is a frozen 1x1 conv with these weights
        self.dfl_bins = nn.Parameter(torch.arange(reg_max, dtype=torch.float32), requires_grad=False)
        self.assign_topk, self.assign_alpha, self.assign_beta = assign_topk, assign_alpha, assign_beta
        self.box_gain, self.cls_gain, self.dfl_gain = box_gain, cls_gain, dfl_gain
        self.topk_candidates = topk_candidates
        self._anchor_points = AnchorPointCache(self.strides)

    def forward(self, features: list[torch.Tensor], **context: Any) -> dict[str, Any]:
        maps = [features[i] for i in self.levels]
        boxes = self.box_branch(maps)  # [(B, 4 reg_max, H_i W_i)]
        classes = self.cls_branch(maps)  # [(B, K, H_i W_i)]
        size = context.get("input_size") or tuple(s * self.strides[0] for s in maps[0].shape[-2:])
        return {"cls_logits": torch.cat(classes, 2).transpose(1, 2),  # (B, P, K)
                "box_distribution": torch.cat(boxes, 2).transpose(1, 2),  # (B, P, 4 reg_max)
                "grid": self._anchor_points([tuple(m.shape[-2:]) for m in maps], maps[0].device),
                "image_size": tuple(size)}

    def decode(self, outputs: dict[str, Any]) -> torch.Tensor:
        """Every location's box ``(B, P, 4)`` xyxy in input pixels."""
        grid = outputs["grid"]
        return distances_to_box(self.distances(outputs["box_distribution"]), grid.points, grid.strides)

    def distances(self, logits: torch.Tensor) -> torch.Tensor:
        """Side distances in strides ``(..., 4)`` from bin logits ``(..., 4 reg_max)`` (`dfl_decode`)."""
        return dfl_decode(logits, self.reg_max, self.dfl_bins.detach())

    # ---- training ----------------------------------------------------------------------------------
    def loss(self, outputs: dict[str, Any], targets: Any) -> dict[str, torch.Tensor]:
        """``classification`` (BCE), ``box`` (CIoU) and ``dfl``, normalised by the sum of the target scores."""
        cls_logits = outputs["cls_logits"].float()
        distribution = outputs["box_distribution"].float()
        targets = self._checked(targets, cls_logits.shape[0])
        grid = outputs["grid"]
        boxes = distances_to_box(self.distances(distribution), grid.points, grid.strides)  # (B, P, 4)
        gt_boxes, gt_labels, gt_mask = pad_boxes([t["boxes"] for t in targets], [t["labels"] - 1 for t in targets],
                                                 cls_logits.device)
        assigned = task_aligned_assign(cls_logits.detach().sigmoid(), boxes.detach(), grid.points, gt_boxes,
                                       gt_labels, gt_mask, self.assign_topk, self.assign_alpha, self.assign_beta)
        total = assigned.scores.sum().clamp(min=1.0)
        classification = F.binary_cross_entropy_with_logits(cls_logits, assigned.scores, reduction="sum") / total
        foreground = assigned.foreground
        image, location = torch.where(foreground)
        weight = assigned.scores.sum(-1)[image, location]  # (F,)
        target_boxes = assigned.boxes[image, location]  # (F, 4)
        box = (complete_box_iou_loss(boxes[image, location], target_boxes, reduction="none") * weight).sum() / total
        sides = box_to_distances(target_boxes, grid.points[location], grid.strides[location], self.reg_max)  # (F, 4)
        bins = distribution[image, location].reshape(-1, self.reg_max)  # (F * 4, reg_max)
        dfl = (distribution_focal_loss(bins, sides.reshape(-1)).view(-1, 4).mean(1) * weight).sum() / total
        return {"classification": self.cls_gain * classification, "box": self.box_gain * box,
                "dfl": self.dfl_gain * dfl}

    # ---- prediction --------------------------------------------------------------------------------
    def class_scores(self, outputs: dict[str, Any]) -> torch.Tensor:
        """Class probabilities ``(B, P, K)``."""
        return outputs["cls_logits"].sigmoid()

    def candidate_boxes(self, outputs: dict[str, Any], location: torch.Tensor) -> torch.Tensor:
        """The decoded boxes ``(B, k, 4)`` of locations ``(B, k)``: only those are decoded."""
        grid = outputs["grid"]
        width = outputs["box_distribution"].shape[-1]
        logits = torch.gather(outputs["box_distribution"], 1, location[..., None].expand(-1, -1, width))  # (B, k, 4R)
        flat = location.reshape(-1)
        distances = self.distances(logits.reshape(-1, width))  # (B k, 4)
        return distances_to_box(distances, grid.points[flat], grid.strides[flat]).reshape(*location.shape, 4)
