"""Detection heads: ``faster_rcnn`` (RPN + RoI heads), ``rpn`` (proposals alone) and ``yolo``
(one-stage, anchor-free, FCOS-style). Labels are ``1..num_classes``; 0 is background."""

from edh.heads.detection import faster_rcnn, rpn, yolo  # noqa: F401
from edh.heads.detection.base import DetectionHead

__all__ = ["DetectionHead"]
