"""What the one-stage detection heads (``fcos``, ``yolo``) share: anchor points on the levels they
read, and one batched, traceable post-processing (top-k candidates, decoding, class-wise NMS) that
eager ``predict`` and an ONNX graph exported with ``--nms`` both run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchvision.ops import batched_nms, clip_boxes_to_image

from edh.core.features import FeatureSpec
from edh.heads.detection.base import DetectionHead, Detections
from edh.ops.anchors import grid_points

MIN_SIZE = 1e-2  # boxes narrower or lower than this are dropped (`edh.ops.boxes.filter_detections`' default)


def chosen_levels(in_spec: FeatureSpec, levels: list[int] | None, head: str) -> list[int]:
    """The source levels a head reads (``levels``, negative indices allowed; default: all), checked
    to exist, be distinct and go from the highest resolution down."""
    n = in_spec.num_levels
    chosen = [i % n for i in (levels if levels is not None else range(n)) if -n <= i < n]
    if levels is not None and (len(chosen) != len(levels) or chosen != sorted(set(chosen))):
        raise ValueError(f"{head}: levels {levels} must be distinct levels of the source, highest resolution first; "
                         f"it has levels 0..{n - 1} ({in_spec.describe()})")
    return chosen


@dataclass(frozen=True)
class AnchorPoints:
    """The cell centres of the levels a head reads, concatenated: ``points (P, 2)`` (x, y) in input
    pixels and each point's level ``strides (P,)``."""

    points: torch.Tensor
    strides: torch.Tensor


class AnchorPointCache:
    """`AnchorPoints` of levels of given ``(H, W)`` sizes and strides, cached (the last sizes used)."""

    def __init__(self, strides: list[int]) -> None:
        self.strides = list(strides)
        self._cached: dict[tuple, AnchorPoints] = {}

    def __call__(self, sizes: list[tuple[int, int]], device: torch.device) -> AnchorPoints:
        key = (tuple(sizes), str(device))
        if key not in self._cached:
            points = [grid_points(size, stride, device=device) for size, stride in zip(sizes, self.strides)]
            strides = torch.cat([torch.full((len(p),), float(s), device=device) for p, s in zip(points, self.strides)])
            self._cached = {key: AnchorPoints(torch.cat(points), strides)}
        return self._cached[key]


class OneStageHead(DetectionHead):
    """A detection head that scores every (location, class) pair and regresses one box per location.

    A subclass's ``forward`` returns a dict with ``image_size`` (the input's ``(H, W)``), and it
    implements `class_scores` and `candidate_boxes`; this class turns them into detections.

    Attributes:
        topk_candidates: (location, class) pairs kept per image before NMS.
    """

    export_postprocess = "batched"
    topk_candidates: int = 1000

    def class_scores(self, outputs: dict[str, Any]) -> torch.Tensor:  # pragma: no cover - abstract
        """Detection scores ``(B, P, K)`` in ``[0, 1]`` of every location and class."""
        raise NotImplementedError

    def candidate_boxes(self, outputs: dict[str, Any], location: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Boxes ``(B, k, 4)`` xyxy in input pixels of the locations ``(B, k)`` of each image."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, outputs: dict[str, Any], **meta: Any) -> Detections:
        """Per image ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}``, best first: `from_postprocessed`
        of `postprocess` (the same code an ONNX graph with ``--nms`` runs)."""
        scores = self.class_scores(outputs)
        return self.from_postprocessed(self.postprocess(outputs, scores), **{**meta, "batch_size": len(scores)})

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Any], scores: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The whole batch's detections at once, in traceable ops (exported with a dynamic batch axis).

        Per image the best ``topk_candidates`` (location, class) scores, decoded, clipped, kept above
        ``score_thresh`` and at least ``MIN_SIZE`` wide and high, then one class-wise NMS over every
        image at once (torchvision's coordinate offset per image and class; ONNX ``NonMaxSuppression``).

        Returns:
            ``boxes (M, 4)``, ``scores (M,)``, ``labels (M,)`` (1..K) and ``batch_index (M,)`` of every
            detection that survives NMS within its image, in decreasing score order (all images).
        """
        scores = self.class_scores(outputs) if scores is None else scores  # (B, P, K)
        batch, locations, classes = scores.shape
        k = min(self.topk_candidates, locations * classes)
        top, index = scores.flatten(1).topk(k, dim=1)  # (B, k)
        location, label = index // classes, index % classes + 1
        boxes = clip_boxes_to_image(self.candidate_boxes(outputs, location).reshape(-1, 4), outputs["image_size"])
        top, label = top.reshape(-1), label.reshape(-1)
        image = torch.arange(batch, device=top.device)[:, None].expand(-1, k).reshape(-1)
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = torch.where((top > self.score_thresh) & (width >= MIN_SIZE) & (height >= MIN_SIZE))[0]
        boxes, top, label, image = boxes[keep], top[keep], label[keep], image[keep]
        keep = batched_nms(boxes, top, image * (classes + 1) + label, self.nms_thresh)
        return {"boxes": boxes[keep], "scores": top[keep], "labels": label[keep], "batch_index": image[keep]}

    def from_postprocessed(self, result: dict[str, torch.Tensor], batch_size: int | None = None,
                           **meta: Any) -> Detections:
        """`postprocess`'s flat detections of ``batch_size`` images -> per image ``{"boxes", "scores",
        "labels"}``, the best ``max_detections`` first."""
        if batch_size is None:
            raise ValueError(f"{type(self).__name__}.from_postprocessed needs batch_size (the number of images): "
                             "images without detections are not in the flat result")
        index = result["batch_index"]
        found = []
        for image in range(batch_size):
            rows = torch.where(index == image)[0]
            rows = rows[result["scores"][rows].argsort(descending=True, stable=True)][:self.max_detections]
            found.append({k: result[k][rows] for k in ("boxes", "scores", "labels")})
        return found
