"""``faster_rcnn``: the two-stage detector head (Ren et al. 2015), an RPN feeding RoI heads.

Why one head holding two stages, not two heads: the RoI stage consumes the RPN's proposals
(and, in training, samples them against the targets), while edh's heads each read the encoder or
decoder independently. Holding ``rpn`` and ``roi`` as submodules keeps that hand-off inside the
head, with no change to how a `Model` wires heads; ``branches`` still lets ``edh describe`` show
the RPN and the RoI classification and box-regression branches as rows of their own, and the
loss keeps the four named terms. The standalone ``rpn`` head is the same first stage on its own.
"""

from __future__ import annotations

from typing import Any

import torch

from edh.core.features import FeatureSpec
from edh.heads.detection.base import DetectionHead, Detections
from edh.heads.detection.roi import RoIHeads
from edh.heads.detection.rpn import RegionProposalNetwork
from edh.core.registry import register_head


@register_head("faster_rcnn")
class FasterRCNNHead(DetectionHead):
    """RPN + RoIAlign + classification and box-regression branches.

    Labels are ``1..num_classes`` (0 is background, added here as the classifier's first row), as in
    torchvision, whose ``fasterrcnn_*`` weights load through `edh.compat.torchvision_detection`.
    Defaults are torchvision's ``FasterRCNN`` defaults.

    Args:
        num_classes, class_names, category_ids, score_thresh, nms_thresh, max_detections: see
            `DetectionHead` (``score_thresh`` / ``nms_thresh`` / ``max_detections`` are torchvision's
            ``box_score_thresh`` / ``box_nms_thresh`` / ``box_detections_per_img``).
        anchor_sizes: anchor sizes per level (default 8 x stride: 32..512 on an R50-FPN).
        aspect_ratios: anchor height / width ratios.
        rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals per level before / per image after NMS,
            ``[training, testing]``.
        rpn_nms_thresh, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
            rpn_positive_fraction: the RPN's NMS, anchor matching and sampling.
        roi_levels: how many of the highest-resolution levels RoIAlign picks from (default: those of
            stride <= 32; the FPN's extra ``pool`` level is left out, as in torchvision).
        roi_output_size, sampling_ratio: RoIAlign settings.
        representation_size: width of the two fc layers.
        box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image, box_positive_fraction:
            proposal matching and sampling for the RoI losses.

    Shapes: a pyramid ``[(B, C, H_i, W_i)]`` (equal C; an ``fpn`` decoder gives one) ->
    ``{"rpn": ..., "roi": ...}`` raw outputs; ``predict`` -> per image boxes ``(D, 4)``, scores, labels.
    """

    branches = {
        "rpn": "region proposals: objectness + box deltas per anchor, NMS",
        "roi.box_head": "RoIAlign 7x7 per proposal -> two fc layers (shared by both branches)",
        "roi.box_predictor.cls_score": "RoI classification branch: classes + background",
        "roi.box_predictor.bbox_pred": "RoI box-regression branch: 4 deltas per class",
    }
    function = "two-stage detection: RPN proposals -> RoI classification + box regression"
    export_postprocess = "single"  # proposals are per-image lists: traced at batch 1
    export_raw = False

    def __init__(self, in_spec: FeatureSpec, num_classes: int, class_names: list[str] | None = None,
                 category_ids: list[int] | None = None, anchor_sizes: list[list[float]] | None = None,
                 aspect_ratios: list[float] = (0.5, 1.0, 2.0), rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
                 rpn_post_nms_top_n: tuple[int, int] = (2000, 1000), rpn_nms_thresh: float = 0.7,
                 rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3, rpn_batch_size_per_image: int = 256,
                 rpn_positive_fraction: float = 0.5, roi_levels: int | None = None, roi_output_size: int = 7,
                 sampling_ratio: int = 2, representation_size: int = 1024, box_fg_iou_thresh: float = 0.5,
                 box_bg_iou_thresh: float = 0.5, box_batch_size_per_image: int = 512,
                 box_positive_fraction: float = 0.25, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 max_detections: int = 100) -> None:
        super().__init__(in_spec, num_classes, class_names, category_ids, score_thresh, nms_thresh, max_detections)
        self.rpn = RegionProposalNetwork(in_spec, anchor_sizes, aspect_ratios, 1, rpn_pre_nms_top_n, rpn_post_nms_top_n,
                                         rpn_nms_thresh, 0.0, rpn_fg_iou_thresh, rpn_bg_iou_thresh,
                                         rpn_batch_size_per_image, rpn_positive_fraction)
        levels = roi_levels or (sum(s <= 32 for s in in_spec.strides) or in_spec.num_levels)
        if not 1 <= levels <= in_spec.num_levels:
            raise ValueError(f"roi_levels must be 1..{in_spec.num_levels} (the source has {in_spec.describe()}), "
                             f"got {roi_levels}")
        self.roi_levels = levels
        self.roi = RoIHeads(in_spec.channels[0], levels, num_classes, roi_output_size, sampling_ratio,
                            representation_size, box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
                            box_positive_fraction)

    def forward(self, features: list[torch.Tensor], **context: Any) -> dict[str, Any]:
        features = list(features)
        size = tuple(context.get("input_size") or (s * self.in_spec.strides[0] for s in features[0].shape[-2:]))
        targets = self._training_targets(context, features[0].shape[0])
        rpn = self.rpn(features, size)
        roi = self.roi(features[:self.roi_levels], rpn["proposals"], size, targets)
        return {"rpn": rpn, "roi": roi}

    def loss(self, outputs: dict[str, Any], targets: Any) -> dict[str, torch.Tensor]:
        """``rpn_objectness``, ``rpn_box``, ``roi_classification``, ``roi_box``."""
        targets = self._checked(targets, outputs["rpn"]["objectness"].shape[0])
        rpn, roi = self.rpn.loss(outputs["rpn"], targets), self.roi.loss(outputs["roi"], targets)
        return {"rpn_objectness": rpn["objectness"], "rpn_box": rpn["box"],
                "roi_classification": roi["classification"], "roi_box": roi["box"]}

    def postprocess(self, outputs: dict[str, Any]) -> Detections:
        """Per image ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}``, best first (`RoIHeads.postprocess`);
        ``predict`` returns it as it is. Traceable one image at a time (``export_postprocess``)."""
        return self.roi.postprocess(outputs["roi"], self.score_thresh, self.nms_thresh, self.max_detections)
