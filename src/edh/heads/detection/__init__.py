"""Detection heads: ``faster_rcnn`` (RPN + RoI heads), ``rpn`` (proposals alone), ``fcos`` (one-stage,
anchor-free) and ``yolo`` (YOLOv8-style: DFL boxes, task-aligned assignment). Labels are ``1..num_classes``; 0 is background."""

from edh.heads.detection import faster_rcnn, fcos, mask_rcnn, rpn, yolo  # noqa: F401
from edh.heads.detection.base import DetectionHead

__all__ = ["DetectionHead"]
