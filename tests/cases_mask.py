"""Role case of the ``mask_rcnn`` head (merged into `roles.TINY`)."""

from __future__ import annotations

import torch

from roles import ANCHORS, DETECTION, Case, detection_targets


def instance_targets(inputs: torch.Tensor, context: dict) -> dict:
    """`roles.detection_targets` with each box's instance mask: an ellipse inscribed in the box, ``(N, H, W)`` uint8."""
    targets = detection_targets(inputs, context)
    height, width = inputs.shape[-2:]
    y, x = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    masks = []
    for boxes in targets["boxes"]:
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
        inside = ((x - centre[:, 0, None, None]) / half[:, 0, None, None]) ** 2 \
            + ((y - centre[:, 1, None, None]) / half[:, 1, None, None]) ** 2 <= 1
        masks.append(inside.to(torch.uint8))
    return {**targets, "masks": masks}


CASES: dict = {
    ("head", "mask_rcnn"): Case({"num_classes": 3, "representation_size": 32, "anchor_sizes": ANCHORS,
                                 "rpn_pre_nms_top_n": [200, 100], "rpn_post_nms_top_n": [100, 50],
                                 "box_batch_size_per_image": 64, "mask_layers": [8, 8], "mask_dim_reduced": 8,
                                 "max_detections": 20},
                                **{**DETECTION, "targets": instance_targets}, export="none",
                                export_note="the eval forward runs the box post-processing (data-dependent "
                                            "detections per image); exported with post-processing at batch 1 as "
                                            "`edh export` does, checked in tests/test_mask_rcnn.py"),
}
