"""RoI heads of Faster R-CNN (Girshick 2015; Ren et al. 2015): RoIAlign, two fc layers, then a
classification branch and a box-regression branch per region.

`RoIHeads` follows torchvision's ``RoIHeads`` (box branch only) step for step, with the same
parameter names, so torchvision weights give the same detections. Post-processing differs in
cost only: boxes are decoded for the (proposal, class) pairs above the score threshold, not for
every pair.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.heads.detection.base import Detections
from edh.ops.boxes import BoxCoder, DetectionTargets, filter_detections
from edh.ops.matching import BalancedPositiveNegativeSampler, Matcher, match_boxes
from edh.ops.roi_align import MultiScaleRoIAlign


class TwoMLPHead(nn.Module):
    """Flattened RoI features -> fc6 -> ReLU -> fc7 -> ReLU (torchvision's names).

    Shapes: ``(R, C, S, S)`` -> ``(R, representation_size)``.
    """

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))


class BoxPredictor(nn.Module):
    """The two branches: ``cls_score`` (classes + background) and ``bbox_pred`` (4 deltas per class).

    Shapes: ``(R, D)`` -> logits ``(R, num_classes + 1)``, deltas ``(R, 4 (num_classes + 1))``.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Region features by multi-scale RoIAlign, then per-region class scores and box deltas.

    Args:
        channels: channels of the pyramid levels it reads.
        num_levels: how many levels RoIAlign chooses from (the highest-resolution ones it is given).
        num_classes: object classes (background added as class 0).
        output_size, sampling_ratio: RoIAlign settings.
        representation_size: width of the two fc layers.
        fg_iou_thresh, bg_iou_thresh: proposal IoU with a box for a positive / below which background.
        batch_size_per_image, positive_fraction: proposals sampled per image in training.
        bbox_reg_weights: box-coder weights of the deltas.
    """

    def __init__(self, channels: int, num_levels: int, num_classes: int, output_size: int = 7,
                 sampling_ratio: int = 2, representation_size: int = 1024, fg_iou_thresh: float = 0.5,
                 bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        super().__init__()
        self.level_names = [str(i) for i in range(num_levels)]
        self.box_roi_pool = MultiScaleRoIAlign(self.level_names, output_size, sampling_ratio)
        self.box_head = TwoMLPHead(channels * output_size**2, representation_size)
        self.box_predictor = BoxPredictor(representation_size, num_classes)
        self.box_coder = BoxCoder(tuple(bbox_reg_weights))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)

    def forward(self, features: list[torch.Tensor], proposals: list[torch.Tensor], image_size: tuple[int, int],
                targets: DetectionTargets | None = None) -> dict[str, Any]:
        """Class logits ``(R, num_classes + 1)`` and deltas ``(R, 4 (num_classes + 1))`` for the R
        regions of the batch (``proposals``: per image ``(R_i, 4)``). With ``targets`` (training) the
        regions are a balanced sample of proposals + ground-truth boxes, and their ``labels``,
        ``regression_targets`` and ``matched`` (``(R,)`` the index of each region's matched box in its
        image's targets, 0 where there is none: what a mask branch learns from) are returned too."""
        out: dict[str, Any] = {}
        if targets is not None:
            proposals, out["labels"], out["regression_targets"], out["matched"] = self.sample(proposals, targets)
        levels = OrderedDict(zip(self.level_names, features))
        pooled = self.box_roi_pool(levels, proposals, tuple(image_size))  # (R, C, S, S)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        out.update(class_logits=class_logits, box_regression=box_regression, proposals=proposals,
                   image_size=tuple(image_size))
        return out

    @torch.no_grad()
    def sample(self, proposals: list[torch.Tensor], targets: DetectionTargets
               ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add the ground truth to the proposals, match, and draw a balanced sample per image.

        Returns the sampled regions per image, their labels ``(R,)``, regression targets ``(R, 4)``
        and matched box indices ``(R,)`` (into each image's targets; 0 where there is none)."""
        proposals = [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets)]
        labels, matched = self._match(proposals, targets)
        positive, negative = self.sampler(labels)
        chosen, chosen_labels, chosen_matches = [], [], []
        for image_proposals, image_labels, image_matched, pos, neg in zip(proposals, labels, matched, positive,
                                                                          negative):
            keep = torch.where(pos | neg)[0]
            chosen.append(image_proposals[keep])
            chosen_labels.append(image_labels[keep])
            chosen_matches.append(image_matched[keep])
        return (chosen, torch.cat(chosen_labels), self._regression_targets(chosen, targets, chosen_matches),
                torch.cat(chosen_matches))

    def _match(self, proposals: list[torch.Tensor], targets: DetectionTargets
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: the class of each proposal's matched box (0 background, -1 ignored) and the
        matched box's index (0 where there is none)."""
        labels, matched = [], []
        for image_proposals, target in zip(proposals, targets):
            index = match_boxes(target["boxes"], image_proposals, self.matcher)
            clamped = index.clamp(min=0)
            label = target["labels"][clamped].long() if len(target["labels"]) else torch.zeros_like(index)
            label[index == Matcher.BELOW_LOW_THRESHOLD] = 0
            label[index == Matcher.BETWEEN_THRESHOLDS] = -1
            labels.append(label)
            matched.append(clamped)
        return labels, matched

    def _regression_targets(self, proposals: list[torch.Tensor], targets: DetectionTargets,
                            matched: list[torch.Tensor]) -> torch.Tensor:
        """Deltas ``(R, 4)`` from each region to its matched box (to a zero box where there is none)."""
        return torch.cat([self.box_coder.encode_single((t["boxes"] if len(t["boxes"]) else p.new_zeros(1, 4))[m], p)
                          for p, t, m in zip(proposals, targets, matched)])

    def loss(self, outputs: dict[str, Any], targets: DetectionTargets) -> dict[str, torch.Tensor]:
        """Cross-entropy over classes and smooth-L1 on the true class's deltas (positives only).

        In eval (no sample was drawn) every proposal is matched to the targets instead."""
        if "labels" in outputs:
            labels, regression = outputs["labels"], outputs["regression_targets"]
        else:
            with torch.no_grad():
                per_image, matched = self._match(outputs["proposals"], targets)
                regression = self._regression_targets(outputs["proposals"], targets, matched)
                labels = torch.cat(per_image)
        class_logits, box_regression = outputs["class_logits"], outputs["box_regression"]
        classification = F.cross_entropy(class_logits, labels, ignore_index=-1)
        positive = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(len(box_regression), -1, 4)[positive, labels[positive]]
        box_loss = F.smooth_l1_loss(deltas, regression[positive], beta=1 / 9, reduction="sum") / max(1, labels.numel())
        return {"classification": classification, "box": box_loss}

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Any], score_thresh: float, nms_thresh: float,
                    max_detections: int) -> Detections:
        """Softmax scores, per-class boxes, score threshold, class-wise NMS, best ``max_detections``:
        a list with one ``{"boxes", "scores", "labels"}`` per image.

        Traceable for one image (an ONNX graph at batch 1): its regions are not split by count (a
        traced ``split`` would freeze the number of proposals)."""
        proposals, image_size = outputs["proposals"], outputs["image_size"]
        scores = F.softmax(outputs["class_logits"], -1)
        deltas = outputs["box_regression"].reshape(scores.shape[0], -1, 4)
        if len(proposals) == 1:
            per_image = [(scores, deltas, proposals[0])]
        else:
            counts = [p.shape[0] for p in proposals]
            per_image = list(zip(scores.split(counts), deltas.split(counts), proposals))
        results = []
        for image_scores, image_deltas, image_proposals in per_image:
            region, label = torch.where(image_scores[:, 1:] > score_thresh)  # region-major, like torchvision
            label = label + 1
            boxes = self.box_coder.decode_single(image_deltas[region, label], image_proposals[region])
            results.append(filter_detections(boxes, image_scores[region, label], label, image_size, score_thresh,
                                             nms_thresh, max_detections))
        return results
