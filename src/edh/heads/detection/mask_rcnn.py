"""``mask_rcnn``: Faster R-CNN with a mask branch (He et al. 2017), torchvision's ``maskrcnn_*_fpn``.

The mask branch reads the same pyramid levels as the box branch: RoIAlign 14x14 per region, four
conv3x3 + ReLU, a 2x2 transposed conv to 28x28 and one logit map per class (`mask_branch`). In
training it runs on the sampled positive proposals and learns, for each, the mask of its matched
instance cropped to the proposal (``roi_mask``); in eval it runs on the final detections, as in
torchvision, so the eval forward already holds the detections and their mask logits, and
``postprocess`` pastes each detection's class probability map into the image.

Targets: the batch's ``boxes`` / ``labels`` and ``masks`` (per image ``(N, H, W)`` 0/1, aligned with
the boxes, at the input's resolution).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.core.registry import register_head
from edh.heads.detection.base import Detections
from edh.heads.detection.faster_rcnn import FasterRCNNHead
from edh.heads.detection.mask_branch import MaskHead, MaskPredictor, class_masks, mask_loss, mask_targets, paste_masks
from edh.ops.boxes import DetectionTargets
from edh.ops.matching import match_boxes
from edh.ops.roi_align import MultiScaleRoIAlign

NO_MASKS = ("the data gives no instance masks: a mask_rcnn head learns from the batch's 'masks' target (per "
            "image one (N, H, W) 0/1 uint8 tensor, one mask per box, at the input's resolution)")
MASKED_DATA = ("Use data that gives instance masks (data: {name: scenes}, or {name: coco, masks: true}), or a "
               "faster_rcnn head to learn boxes alone")


@register_head("mask_rcnn")
class MaskRCNNHead(FasterRCNNHead):
    """RPN + RoI classification / box regression + a mask per detection (torchvision's ``MaskRCNN``).

    Args:
        (all of `FasterRCNNHead`'s, with torchvision's defaults)
        mask_output_size, mask_sampling_ratio: RoIAlign of the mask branch (14, 2).
        mask_layers: output channels of the mask head's conv3x3 layers (four of 256).
        mask_dilation: their dilation.
        mask_dim_reduced: channels of the transposed conv (256).
        mask_thresh: probability above which a pixel belongs to a detection's mask (mask mAP,
            pictures, the RLE of ``prediction_records``); ``predict`` gives the probabilities.

    Shapes: a pyramid ``[(B, C, H_i, W_i)]`` -> raw outputs (``rpn``, ``roi``, ``mask``); ``predict`` ->
    per image ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)``, ``masks (D, 1, H, W)`` float
    probabilities of each detection's class pasted into the input (as torchvision), and
    ``box_masks (D, 28, 28)`` the same on the box's own grid (what ``masks`` is pasted from; pasted
    again at an image file's resolution for pictures and records).
    """

    branches = {
        **FasterRCNNHead.branches,
        "mask_head": "RoIAlign 14x14 per region -> conv3x3 + ReLU layers (mask_layers; torchvision: 4 x 256)",
        "mask_predictor": "mask branch: ConvTranspose 2x2 -> 28x28, 1x1 conv to a mask logit map per class",
    }
    function = "instance segmentation: RPN proposals -> RoI classification, box regression and a mask per box"
    task = "instance_segmentation"
    tiling = None  # pasted masks are image-sized maps per detection: not merged across tiles

    def __init__(self, in_spec: FeatureSpec, num_classes: int, class_names: list[str] | None = None,
                 category_ids: list[int] | None = None, anchor_sizes: list[list[float]] | None = None,
                 aspect_ratios: list[float] = (0.5, 1.0, 2.0), rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
                 rpn_post_nms_top_n: tuple[int, int] = (2000, 1000), rpn_nms_thresh: float = 0.7,
                 rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3, rpn_batch_size_per_image: int = 256,
                 rpn_positive_fraction: float = 0.5, roi_levels: int | None = None, roi_output_size: int = 7,
                 sampling_ratio: int = 2, representation_size: int = 1024, box_fg_iou_thresh: float = 0.5,
                 box_bg_iou_thresh: float = 0.5, box_batch_size_per_image: int = 512,
                 box_positive_fraction: float = 0.25, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 max_detections: int = 100, mask_output_size: int = 14, mask_sampling_ratio: int = 2,
                 mask_layers: tuple[int, ...] = (256, 256, 256, 256), mask_dilation: int = 1,
                 mask_dim_reduced: int = 256, mask_thresh: float = 0.5) -> None:
        super().__init__(
            in_spec, num_classes, class_names=class_names, category_ids=category_ids, anchor_sizes=anchor_sizes,
            aspect_ratios=aspect_ratios, rpn_pre_nms_top_n=rpn_pre_nms_top_n, rpn_post_nms_top_n=rpn_post_nms_top_n,
            rpn_nms_thresh=rpn_nms_thresh, rpn_fg_iou_thresh=rpn_fg_iou_thresh, rpn_bg_iou_thresh=rpn_bg_iou_thresh,
            rpn_batch_size_per_image=rpn_batch_size_per_image, rpn_positive_fraction=rpn_positive_fraction,
            roi_levels=roi_levels, roi_output_size=roi_output_size, sampling_ratio=sampling_ratio,
            representation_size=representation_size, box_fg_iou_thresh=box_fg_iou_thresh,
            box_bg_iou_thresh=box_bg_iou_thresh, box_batch_size_per_image=box_batch_size_per_image,
            box_positive_fraction=box_positive_fraction, score_thresh=score_thresh, nms_thresh=nms_thresh,
            max_detections=max_detections)
        if not mask_layers:
            raise ValueError("mask_layers lists the channels of the mask head's convs; give at least one (e.g. "
                             "[256, 256, 256, 256])")
        if not 0 < mask_thresh < 1:
            raise ValueError(f"mask_thresh is a probability in (0, 1), got {mask_thresh}")
        self.mask_thresh = mask_thresh
        self.mask_roi_pool = MultiScaleRoIAlign(self.roi.level_names, mask_output_size, mask_sampling_ratio)
        self.mask_head = MaskHead(in_spec.channels[0], tuple(mask_layers), mask_dilation)
        self.mask_predictor = MaskPredictor(self.mask_head.out_channels, mask_dim_reduced, num_classes)

    # ---- forward and loss -----------------------------------------------------------------------
    def forward(self, features: list[torch.Tensor], **context: Any) -> dict[str, Any]:
        """Training: ``mask`` holds the mask logits ``(P, K + 1, 28, 28)`` of the positive sampled
        regions (per image ``boxes`` and ``matched`` instance indices). Eval: the ``detections`` (per
        image, as `FasterRCNNHead.postprocess`) and their mask logits."""
        features = list(features)
        size = tuple(context.get("input_size") or (s * self.in_spec.strides[0] for s in features[0].shape[-2:]))
        targets = self._training_targets(context, features[0].shape[0])
        levels = features[:self.roi_levels]
        rpn = self.rpn(features, size)
        roi = self.roi(levels, rpn["proposals"], size, targets)
        outputs: dict[str, Any] = {"rpn": rpn, "roi": roi}
        if targets is not None:  # the positive sampled regions, each with its matched instance
            counts = [len(p) for p in roi["proposals"]]
            positive = [labels > 0 for labels in roi["labels"].split(counts)]
            boxes = [p[keep] for p, keep in zip(roi["proposals"], positive)]
            matched = [m[keep] for m, keep in zip(roi["matched"].split(counts), positive)]
            outputs["mask"] = {"logits": self.mask_logits(levels, boxes, size), "boxes": boxes, "matched": matched}
        else:  # the final detections, as torchvision's eval runs the mask branch
            detections = super().postprocess(outputs)
            outputs["mask"] = {"logits": self.mask_logits(levels, [d["boxes"] for d in detections], size),
                               "detections": detections}
        return outputs

    def mask_logits(self, levels: list[torch.Tensor], boxes: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Mask logits ``(R, K + 1, 2 S, 2 S)`` of the regions ``boxes`` (per image ``(R_i, 4)`` xyxy pixels)."""
        pooled = self.mask_roi_pool(OrderedDict(zip(self.roi.level_names, levels)), boxes, size)  # (R, C, S, S)
        return self.mask_predictor(self.mask_head(pooled))

    def loss(self, outputs: dict[str, Any], targets: Any) -> dict[str, torch.Tensor]:
        """Faster R-CNN's four terms and ``roi_mask``: binary cross-entropy of each positive region's
        mask logits of its matched instance's class against that instance's mask, cropped to the
        region and resized to 28x28 by RoIAlign (torchvision's ``maskrcnn_loss``). In eval the
        regions are the detections overlapping an instance by IoU >= ``box_fg_iou_thresh``."""
        targets = self._checked(targets, outputs["rpn"]["objectness"].shape[0])
        terms = super().loss(outputs, targets)
        terms["roi_mask"] = self._mask_loss(outputs["mask"], targets, tuple(outputs["roi"]["image_size"]))
        return terms

    def _mask_loss(self, mask: dict[str, Any], targets: DetectionTargets, size: tuple[int, int]) -> torch.Tensor:
        logits = mask["logits"]
        if "detections" in mask:  # eval: match the detections to the instances
            rows, boxes, matched, start = [], [], [], 0
            for found, target in zip(mask["detections"], targets):
                index = match_boxes(target["boxes"], found["boxes"], self.roi.matcher) if len(found["boxes"]) \
                    else found["labels"].new_zeros(0)
                keep = torch.where(index >= 0)[0]
                rows.append(keep + start)
                boxes.append(found["boxes"][keep])
                matched.append(index[keep])
                start += len(found["boxes"])
            logits = logits[torch.cat(rows)]
        else:
            boxes, matched = mask["boxes"], mask["matched"]
        for index, target in enumerate(targets):
            if tuple(target["masks"].shape[-2:]) != tuple(size):
                raise ValueError(f"{type(self).__name__}: the instance masks of image {index} are "
                                 f"{target['masks'].shape[-2]}x{target['masks'].shape[-1]} but the input is "
                                 f"{size[0]}x{size[1]}; masks are at the input's resolution (padded like the image)")
        labels = torch.cat([t["labels"][m] for t, m in zip(targets, matched)])
        goal = torch.cat([mask_targets(t["masks"], b, m, logits.shape[-1]) for t, b, m in zip(targets, boxes, matched)])
        return mask_loss(logits, labels, goal)

    # ---- targets ------------------------------------------------------------------------------------
    def select_targets(self, targets: dict[str, Any], key: str) -> DetectionTargets:
        """Per-image ``{"boxes", "labels", "masks"}``: the batch's ``masks`` list joined to the detection
        targets (or per-image dicts that already hold ``masks``, torchvision's layout)."""
        selected = super().select_targets(targets, key)
        masks = targets.get("masks") if isinstance(targets, dict) else None
        if isinstance(masks, (list, tuple)) or (isinstance(masks, torch.Tensor) and masks.ndim == 4):
            if len(masks) != len(selected):
                raise ValueError(f"{type(self).__name__}: the batch has {len(masks)} instance mask tensors for "
                                 f"{len(selected)} images; give one (N, H, W) tensor per image")
            selected = [{**t, "masks": m} for t, m in zip(selected, masks)]
        return selected

    def _checked(self, targets: DetectionTargets, batch_size: int) -> DetectionTargets:
        clean = super()._checked(targets, batch_size)
        out = []
        for index, (given, target) in enumerate(zip(targets, clean)):
            masks = given.get("masks")
            if masks is None:
                raise ValueError(f"{type(self).__name__}: {NO_MASKS}, and image {index} of this batch has none. "
                                 f"{MASKED_DATA}")
            masks = torch.as_tensor(masks)
            if masks.ndim != 3 or masks.shape[0] != len(target["boxes"]):
                raise ValueError(f"{type(self).__name__}: image {index} has {len(target['boxes'])} boxes but instance "
                                 f"masks shaped {tuple(masks.shape)}; expected ({len(target['boxes'])}, H, W), one "
                                 "mask per box in the boxes' order")
            out.append({**target, "masks": masks})
        return out

    def bind_data(self, info: Any) -> None:
        """Faster R-CNN's class check, and a `SpecError` when the data states its targets but no ``masks``."""
        super().bind_data(info)
        from edh.heads.data_checks import head_path

        targets = getattr(info, "targets", None)
        if isinstance(targets, dict) and targets and "masks" not in targets:
            name = (getattr(info, "extra", None) or {}).get("dataset")
            data = f"the data {name!r}" if name else "the data"
            raise SpecError(f"{head_path(self)}: {NO_MASKS}, but {data} gives only {', '.join(map(str, targets))}. "
                            f"{MASKED_DATA}")

    # ---- predictions ----------------------------------------------------------------------------------
    def postprocess(self, outputs: dict[str, Any]) -> Detections:
        """Per image the detections with ``masks (D, 1, H, W)`` (each one's class probabilities pasted
        into the input, torchvision's ``paste_masks_in_image``) and ``box_masks (D, 28, 28)``.
        Traceable one image at a time (``export_postprocess``)."""
        if "detections" not in outputs["mask"]:
            raise ValueError(f"{type(self).__name__}: these outputs come from training mode; call model.eval() "
                             "before predicting")
        detections, logits = outputs["mask"]["detections"], outputs["mask"]["logits"]
        size = tuple(outputs["roi"]["image_size"])
        probabilities = class_masks(logits, torch.cat([d["labels"] for d in detections])).float()  # (D, M, M)
        per_image = [probabilities] if len(detections) == 1 else \
            probabilities.split([len(d["boxes"]) for d in detections])
        return [{**found, "masks": paste_masks(p, found["boxes"], size)[:, None], "box_masks": p}
                for found, p in zip(detections, per_image)]

    def masks_at(self, found: dict[str, torch.Tensor], input_size: tuple[int, int],
                 size: tuple[int, int]) -> torch.Tensor:
        """One image's detection masks ``(D, h, w)`` bool (probability > ``mask_thresh``) on an image of
        ``size`` (its file), pasted there from ``box_masks`` as torchvision does for the original size."""
        from edh.heads.detection.drawing import scale_boxes

        if tuple(size) == tuple(input_size) or "box_masks" not in found:
            masks = found["masks"][:, 0].float()
            if tuple(masks.shape[-2:]) != tuple(size):
                masks = torch.nn.functional.interpolate(masks[:, None], size=tuple(size), mode="bilinear")[:, 0]
            return masks > self.mask_thresh
        boxes = scale_boxes(found["boxes"].float(), input_size, size)
        return paste_masks(found["box_masks"].float(), boxes, size) > self.mask_thresh

    def align_predictions(self, reference: Detections, other: Detections) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, torch.Tensor]]:
        """As `DetectionHead.align_predictions`, with the pasted ``masks`` of each pair too."""
        ours, theirs = super().align_predictions(reference, other)
        start, mine, partners = 0, [], []
        for a, b in zip(reference, other):
            end = start + len(a["boxes"])
            same = ((theirs["boxes"][start:end, None] == b["boxes"][None]).all(-1)
                    & (theirs["scores"][start:end, None] == b["scores"][None]))
            mine.append(a["masks"])
            partners.append(b["masks"][same.float().argmax(1)])
            start = end
        return {**ours, "masks": torch.cat(mine)}, {**theirs, "masks": torch.cat(partners)}

    def format_prediction(self, prediction: Detections, index: int) -> str:
        line = super().format_prediction(prediction, index)
        found = prediction[index]
        if len(found["boxes"]):
            area = (found["masks"][:, 0] > self.mask_thresh).flatten(1).sum(1).tolist()
            line += f"; mask pixels {', '.join(str(int(a)) for a in area[:10])}" + (" ..." if len(area) > 10 else "")
        return line

    def prediction_json(self, prediction: Detections, index: int, source: Path | None = None,
                        input_size: tuple[int, int] | None = None) -> dict[str, Any]:
        """`DetectionHead.prediction_json` with each detection's ``mask``: COCO compressed RLE (``size``
        ``[H, W]``, ``counts`` a str) at the image file's resolution; pycocotools' ``mask.decode`` reads it."""
        import numpy as np
        from pycocotools import mask as mask_utils

        answer = super().prediction_json(prediction, index, source, input_size)
        found = prediction[index]
        if not len(found["boxes"]):
            return answer
        at = tuple(input_size) if input_size else tuple(answer["size"])
        masks = self.masks_at(found, at, tuple(answer["size"])).cpu().numpy().astype(np.uint8)  # (D, h, w)
        order = found["scores"].argsort(descending=True, stable=True).tolist()  # the order of the detections
        rles = mask_utils.encode(np.asfortranarray(masks[order].transpose(1, 2, 0)))
        for detection, rle in zip(answer["detections"], rles):
            detection["mask"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        return answer

    def write_predictions(self, prediction: Detections, images: torch.Tensor, paths: list[Path], out_dir: Path,
                          **kwargs: Any) -> list[Path]:
        """``<stem>.boxes.png`` per image: the image file (or the model input) with each detection scoring
        at least `picture_min_score` drawn: its mask, box, class and score; masks at the file's resolution."""
        from edh.heads.detection.drawing import draw_detections, image_size

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        size = tuple(images.shape[-2:])
        written = []
        for i, path in enumerate(paths):
            shown = image_size(path) if Path(path).is_file() else size
            written.append(draw_detections(path, prediction[i], size, self.label_name,
                                           out_dir / f"{Path(path).stem}.boxes.png", images[i],
                                           masks=self.masks_at(prediction[i], size, shown).cpu(),
                                           min_score=self.picture_min_score))
        return written

    def prediction_records(self, prediction: Detections, paths: list[Path], input_size: tuple[int, int],
                           info: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        """`DetectionHead.prediction_records` with each detection's ``segmentation``: its mask at the image
        file's resolution as COCO compressed RLE (``counts`` a str), what ``COCO.loadRes`` reads."""
        import numpy as np
        from pycocotools import mask as mask_utils

        from edh.heads.detection.drawing import image_size

        records = super().prediction_records(prediction, paths, input_size, info, **kwargs)
        total = sum(len(prediction[i]["boxes"]) for i in range(len(paths)))
        if len(records) != total:
            raise RuntimeError(f"{type(self).__name__}: {len(records)} detection records for {total} detections; "
                               "cannot attach their segmentations")
        position = 0
        for index, path in enumerate(paths):
            found = prediction[index]
            if not len(found["boxes"]):
                continue
            size = image_size(path) if Path(path).is_file() else tuple(input_size)
            masks = self.masks_at(found, tuple(input_size), size).cpu().numpy().astype(np.uint8)  # (D, h, w)
            for rle in mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))):
                rle["counts"] = rle["counts"].decode("ascii")
                records[position]["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}
                position += 1
        return records

    # ---- metrics --------------------------------------------------------------------------------------
    def make_metrics(self, stage: str = "val"):
        """Box and mask COCO mAP (torchmetrics' MeanAveragePrecision, ``iou_type=("bbox", "segm")``,
        pycocotools backend); per class in ``test``."""
        from torchmetrics.detection import MeanAveragePrecision

        return MeanAveragePrecision(box_format="xyxy", iou_type=("bbox", "segm"), class_metrics=stage == "test",
                                    backend="pycocotools")

    def update_metrics(self, metrics, outputs: Any, targets: Any) -> None:
        detections = self.predict(outputs)
        if isinstance(targets, dict):
            targets = self.select_targets(targets, "")
        truth = self._checked(list(targets), len(detections))
        metrics.update([{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"],
                         "masks": d["masks"][:, 0] > self.mask_thresh} for d in detections],
                       [{"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"].bool()} for t in truth])

    def summarize(self, values: dict[str, torch.Tensor], out_dir: Path | None = None) -> tuple[dict[str, float], list[str]]:
        """Box ``mAP``, ``mAP@0.5``, ``mAP@0.75``, ``mAR@100`` and mask ``mask_mAP``, ``mask_mAP@0.5``,
        ``mask_mAP@0.75``, ``mask_mAR@100``; in test each class's box and mask AP (``AP/<class>``,
        ``mask_AP/<class>``) and their lines."""
        if "bbox_map" not in values and "segm_map" not in values:
            return super().summarize(values, out_dir)
        box = {key[len("bbox_"):]: v for key, v in values.items() if key.startswith("bbox_") and "per_class" not in key}
        scalars, _ = super().summarize(box, out_dir)
        names = {"map": "mask_mAP", "map_50": "mask_mAP@0.5", "map_75": "mask_mAP@0.75", "mar_100": "mask_mAR@100"}
        scalars.update({label: float(values[f"segm_{key}"]) for key, label in names.items() if f"segm_{key}" in values})
        lines = []
        boxes, masks = values.get("bbox_map_per_class"), values.get("segm_map_per_class")
        classes = values.get("classes")
        if boxes is not None and masks is not None and classes is not None and boxes.numel() > 1:
            for label, box_ap, mask_ap in zip(classes.tolist(), boxes.tolist(), masks.tolist()):
                if box_ap >= 0:  # AP -1: a class without ground truth, it has no figures
                    name = self.label_name(int(label))
                    scalars[f"AP/{name}"], scalars[f"mask_AP/{name}"] = box_ap, mask_ap
            width = max(len(n) for n in self.class_names)
            lines.append(f"{'class':<{width}}  box AP@[.5:.95]  mask AP@[.5:.95]")
            lines += [f"{self.label_name(int(label)):<{width}}  {b:15.3f}  {m:16.3f}"
                      for label, b, m in zip(classes.tolist(), boxes.tolist(), masks.tolist())]
        return scalars, lines
