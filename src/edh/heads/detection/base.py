"""What every detection head shares: targets, COCO mAP, printed / drawn / JSON predictions.

Class ids follow torchvision: object classes are ``1..num_classes`` and 0 is background
(``class_names[k - 1]`` names class ``k``), as edh's ``scenes`` and ``coco`` data give them.
A detection head learns from the batch's ``boxes`` (per image ``(N, 4)`` float x1, y1, x2, y2 in
input pixels) and ``labels`` (per image ``(N,)`` int64) targets.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from edh.core.features import FeatureSpec
from edh.heads.base import Head
from edh.ops.boxes import DetectionTargets, check_targets, split_targets, to_xywh
from edh.ops.tiling import merge_detections, predictions_of

log = logging.getLogger("edh")

Detections = list[dict[str, torch.Tensor]]  # per image: boxes (D, 4), scores (D,), labels (D,)


class DetectionHead(Head):
    """Base of the detection heads: target handling, metrics and prediction output.

    Args:
        num_classes: object classes, background not counted (labels are ``1..num_classes``).
        class_names: a name per object class (``class_names[k - 1]`` for label ``k``).
        category_ids: the dataset's category id per class (COCO ids), used in the results JSON.
        score_thresh: detections scoring at most this are dropped by ``predict``.
        nms_thresh: IoU above which class-wise NMS drops the lower-scoring box (also across tile
            borders, `merge_tiles`).
        max_detections: detections kept per image; on tiles (``edh predict --tile``) per tile, then
            again for the whole image after merging.
    """

    accepts = ("pyramid",)
    task = "detection"
    tiling = "boxes"  # predict gives boxes in input pixels: tiles' boxes are shifted and merged (merge_tiles)

    def __init__(self, in_spec: FeatureSpec, num_classes: int, class_names: list[str] | None = None,
                 category_ids: list[int] | None = None, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 max_detections: int = 100) -> None:
        super().__init__(in_spec)
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1 (object classes, background not counted), got "
                             f"{num_classes}")
        for name, given in (("class_names", class_names), ("category_ids", category_ids)):
            if given is not None and len(given) != num_classes:
                raise ValueError(f"{name} has {len(given)} entries but num_classes is {num_classes}; give one "
                                 "per object class (background not included)")
        if not 0 <= nms_thresh <= 1:
            raise ValueError(f"nms_thresh is an IoU in [0, 1], got {nms_thresh}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(1, num_classes + 1)]
        self.category_ids = list(category_ids) if category_ids else list(range(1, num_classes + 1))
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections

    def bind_data(self, info: Any) -> None:
        """Refuse data with more object classes than ``num_classes`` before the first step (labels
        ``1..num_classes``; a larger one would stop training); warn when the head has more."""
        from edh.heads.data_checks import check_classes, data_target

        check_classes(self, data_target(self, info, ("detection",), class_names_for=("*",)), 1,
                      "object classes")

    # ---- targets -------------------------------------------------------------------------------
    def select_targets(self, targets: dict[str, Any], key: str) -> DetectionTargets:
        """Per-image ``{"boxes", "labels"}`` from the batch: ``targets[key]`` when it holds such a
        list (torchvision's layout), else the batch's ``boxes`` and ``labels`` entries."""
        if key in targets and isinstance(targets[key], (list, tuple)) and targets[key] \
                and isinstance(targets[key][0], dict):
            return list(targets[key])
        return split_targets(targets)

    def _training_targets(self, context: dict[str, Any], batch_size: int) -> DetectionTargets | None:
        """Checked targets from the forward context while training (None in eval)."""
        if not self.training:
            return None
        if context.get("targets") is None:
            raise ValueError(f"{type(self).__name__} is in training mode but got no targets; call "
                             "model(images, targets={'boxes': [...], 'labels': [...]}) or model.eval() to predict")
        return self._checked(self.select_targets(context["targets"], ""), batch_size)

    def _checked(self, targets: DetectionTargets, batch_size: int) -> DetectionTargets:
        return check_targets(targets, self.num_classes, batch_size, type(self).__name__)

    # ---- metrics ---------------------------------------------------------------------------------
    def make_metrics(self, stage: str = "val"):
        """COCO mAP (torchmetrics' MeanAveragePrecision, pycocotools backend); per class in ``test``."""
        from torchmetrics.detection import MeanAveragePrecision

        return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=stage == "test",
                                    backend="pycocotools")

    def update_metrics(self, metrics, outputs: Any, targets: Any) -> None:
        detections = predictions_of(self, outputs)  # raw outputs, or predictions merged over tiles
        if isinstance(targets, dict) or (targets and not isinstance(targets[0], dict)):
            targets = split_targets(targets)
        truth = [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in targets]
        metrics.update([{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections], truth)

    def summarize(self, values: dict[str, torch.Tensor], out_dir: Path | None = None) -> tuple[dict[str, float], list[str]]:
        """``mAP`` (IoU 0.5:0.95), ``mAP@0.5``, ``mAP@0.75`` and ``mAR@100``; in test each class's
        ``AP/<class>`` (AP@[.5:.95]; a class without ground truth, AP -1 in the lines, has none) and its lines."""
        names = {"map": "mAP", "map_50": "mAP@0.5", "map_75": "mAP@0.75", "mar_100": "mAR@100"}
        scalars = {label: float(values[key]) for key, label in names.items() if key in values}
        lines = []
        per_class = values.get("map_per_class")
        classes = values.get("classes")
        if per_class is not None and classes is not None and per_class.numel() > 1:
            scalars.update({f"AP/{self.label_name(int(label))}": ap for label, ap in
                            zip(classes.tolist(), per_class.tolist()) if ap >= 0})
            width = max(len(n) for n in self.class_names)
            lines.append(f"{'class':<{width}}  AP@[.5:.95]")
            for label, ap in zip(classes.tolist(), per_class.tolist()):
                lines.append(f"{self.label_name(int(label)):<{width}}  {ap:11.3f}")
        return scalars, lines

    # ---- predictions ----------------------------------------------------------------------------
    def align_predictions(self, reference: Detections, other: Detections) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, torch.Tensor]]:
        """Both predictions as ``{"boxes", "scores", "labels"}`` over all images, ``other``'s detections
        in the order of their partners in ``reference``: per image, each reference detection (best
        first) takes the closest unpaired one of the same label (by box distance, then score), so
        near-equal scores in another order still pair up. ``ValueError`` when an image has another
        number of detections, or a detection has no partner of its label."""
        if len(reference) != len(other):
            raise ValueError(f"{len(reference)} images in the reference but {len(other)} in the other")
        ours, theirs = [], []
        for index, (a, b) in enumerate(zip(reference, other)):
            if len(a["boxes"]) != len(b["boxes"]):
                raise ValueError(f"image {index} has {len(a['boxes'])} detections in the reference but "
                                 f"{len(b['boxes'])} in the other")
            pairs = _pair(a, b)
            if pairs is None:
                raise ValueError(f"image {index}: detections of other labels in the other than in the reference")
            ours.append({k: a[k] for k in ("boxes", "scores", "labels")})
            theirs.append({k: b[k][pairs] for k in ("boxes", "scores", "labels")})
        join = lambda found: {k: torch.cat([d[k] for d in found]) for k in ("boxes", "scores", "labels")}  # noqa: E731
        return join(ours), join(theirs)

    def merge_tiles(self, found: dict[str, torch.Tensor], merge: str = "nms") -> dict[str, torch.Tensor]:
        """One image's detections from its tiles (image pixels) merged where tiles overlap: class-wise
        NMS or weighted box fusion at ``nms_thresh``, then the best ``max_detections`` of the whole image."""
        return merge_detections(found, merge, self.nms_thresh, self.max_detections)

    def prediction_settings(self) -> dict[str, Any]:
        """``score_thresh``, ``nms_thresh`` and ``max_detections``: what decides which boxes ``predict`` keeps."""
        return {"score_thresh": self.score_thresh, "nms_thresh": self.nms_thresh,
                "max_detections": self.max_detections}

    def set_prediction_settings(self, **values: Any) -> None:
        """Change ``score_thresh``, ``nms_thresh`` or ``max_detections`` (checked like the constructor's)."""
        if "max_detections" in values and (not isinstance(values["max_detections"], int)
                                           or values["max_detections"] < 1):
            raise ValueError(f"max_detections is a number of detections per image (at least 1), got "
                             f"{values['max_detections']!r}")
        if "nms_thresh" in values and not 0 <= values["nms_thresh"] <= 1:
            raise ValueError(f"nms_thresh is an IoU in [0, 1], got {values['nms_thresh']}")
        super().set_prediction_settings(**values)

    def prediction_notes(self, prediction: Detections, paths: list[Path], name: str = "head") -> list[str]:
        """One warning per image whose detections reached ``max_detections``: the cap may hide objects."""
        cap = self.max_detections
        return [f"image {Path(str(path)).name}: {cap} detections = head {name!r} max_detections; more objects "
                f"may be there: raise it (edh predict --max-detections N, or heads.{name}.max_detections in the "
                "spec)" for path, found in zip(paths, prediction) if len(found["boxes"]) >= cap]

    def label_name(self, label: int) -> str:
        return self.class_names[label - 1] if 1 <= label <= self.num_classes else str(label)

    def format_prediction(self, prediction: Detections, index: int) -> str:
        found = prediction[index]
        if len(found["boxes"]) == 0:
            return "no detections"
        parts = [f"{self.label_name(int(l))} {float(s):.2f} [{', '.join(f'{v:.0f}' for v in b.tolist())}]"
                 for b, s, l in zip(found["boxes"], found["scores"], found["labels"])]
        return f"{len(parts)} boxes: " + "; ".join(parts[:10]) + (" ..." if len(parts) > 10 else "")

    def prediction_json(self, prediction: Detections, index: int, source: Path | None = None,
                        input_size: tuple[int, int] | None = None) -> dict[str, Any]:
        """``{"size", "detections": [{"label", "category_id", "score", "box"}]}``: boxes ``[x1, y1, x2, y2]``
        in the pixels of the image file ``source`` (``size`` ``[H, W]``), most confident first."""
        from edh.heads.detection.drawing import image_size, scale_boxes

        found = prediction[index]
        size = image_size(source) if source is not None and Path(source).is_file() else tuple(input_size or ())
        boxes = scale_boxes(found["boxes"].float().cpu(), input_size, size) if input_size and size else found["boxes"]
        order = found["scores"].argsort(descending=True, stable=True).tolist()
        labels, scores, rows = found["labels"].tolist(), found["scores"].tolist(), boxes.tolist()
        detections = []
        for i in order:
            label = int(labels[i])
            category = self.category_ids[label - 1] if 1 <= label <= self.num_classes else label
            detections.append({"label": self.label_name(label), "category_id": int(category),
                               "score": round(float(scores[i]), 5), "box": [round(v, 2) for v in rows[i]]})
        return {"size": list(size), "detections": detections}

    def picture_description(self) -> str:
        return f"boxes scoring >= {self.picture_min_score:.2f}, with class and score"

    def write_predictions(self, prediction: Detections, images: torch.Tensor, paths: list[Path],
                          out_dir: Path) -> list[Path]:
        """``<stem>.boxes.png`` per image: the original image file (or, where there is none, the model
        input) with each box scoring at least `picture_min_score`, its class and score drawn."""
        from edh.heads.detection.drawing import draw_detections

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        size = tuple(images.shape[-2:])
        return [draw_detections(path, prediction[i], size, self.label_name, out_dir / f"{Path(path).stem}.boxes.png",
                                images[i], min_score=self.picture_min_score) for i, path in enumerate(paths)]

    @property
    def picture_min_score(self) -> float:
        """The lowest score ``write_predictions`` draws: `drawing.PICTURE_MIN_SCORE` (0.3), or
        ``score_thresh`` where higher; ``predict`` keeps lower scores (for mAP) than a picture can show."""
        from edh.heads.detection.drawing import picture_min_score

        return picture_min_score(self.score_thresh)

    def prediction_records(self, prediction: Detections, paths: list[Path], input_size: tuple[int, int],
                           info: Any = None) -> list[dict[str, Any]]:
        """COCO results (``image_id``, ``category_id``, ``bbox`` x, y, w, h in the image file's pixels,
        ``score``): what ``pycocotools``' ``COCO.loadRes`` reads.

        ``image_id``: ``info.extra["image_ids"][file name]`` when ``edh predict`` resolved the ids
        there (the run's COCO files, then ``--image-ids``, then the stem); else from the run's COCO
        annotation files when the file name is listed there, else from a numeric file stem
        (``000000139.jpg`` -> 139), else the file name itself (a string, never a made-up number).
        """
        from edh.heads.detection.drawing import image_size, scale_boxes

        extra = getattr(info, "extra", None) or {}
        ids = extra["image_ids"] if "image_ids" in extra else _image_ids(info)
        records = []
        for index, path in enumerate(paths):
            path = Path(path)
            image_id = ids.get(path.name, int(path.stem) if path.stem.isdigit() else path.name)
            found = prediction[index]
            size = image_size(path) if path.is_file() else input_size
            boxes = to_xywh(scale_boxes(found["boxes"], input_size, size))
            for box, score, label in zip(boxes.tolist(), found["scores"].tolist(), found["labels"].tolist()):
                category = self.category_ids[label - 1] if 1 <= label <= self.num_classes else label
                records.append({"image_id": image_id, "category_id": int(category),
                                "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
        return records


def _pair(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """For each detection of ``a``, the index of its partner in ``b`` (see `DetectionHead.align_predictions`),
    or None when some detection has no partner of its label."""
    order = a["scores"].argsort(descending=True, stable=True)
    free = torch.ones(len(b["boxes"]), dtype=torch.bool, device=b["boxes"].device)
    pairs = torch.empty(len(order), dtype=torch.long, device=b["boxes"].device)
    for i in order.tolist():
        same = torch.where(free & (b["labels"].long() == int(a["labels"][i])))[0]
        if not len(same):
            return None
        cost = (b["boxes"][same] - a["boxes"][i].to(b["boxes"])).abs().amax(1) \
            + (b["scores"][same] - a["scores"][i].to(b["scores"])).abs()
        j = int(same[cost.argmin()])
        pairs[i], free[j] = j, False
    return pairs


def _image_ids(info: Any) -> dict[str, int]:
    """File name -> image id from the COCO annotation files a run was trained on (if any)."""
    files = (getattr(info, "extra", None) or {}).get("coco_annotations", [])
    ids: dict[str, int] = {}
    for file in files:
        try:  # UTF-8 with or without a byte-order mark (edh's COCO reader accepted the file when training)
            images = json.loads(Path(file).read_bytes().decode("utf-8-sig")).get("images", [])
        except (OSError, ValueError) as error:
            log.warning("cannot read image ids from %s (%s): its images get ids from their file names", file, error)
            continue
        ids.update({Path(str(i.get("file_name", ""))).name: int(i["id"]) for i in images if "id" in i})
    return ids
