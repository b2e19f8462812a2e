"""Detection heads with their post-processing (score filtering, box decoding, NMS) inside the ONNX graph.

- ``yolo`` heads: a batched re-formulation of `YoloHead.predict` (top-k candidates per image,
  decoding, clipping, score and size filtering, then one NMS over every image and class at once
  by torchvision's coordinate offset, which exports as ONNX ``NonMaxSuppression``). The graph keeps
  a dynamic batch axis and returns flat ``boxes (M, 4)``, ``scores (M,)``, ``labels (M,)`` and
  ``batch_index (M,)``, best first; `split_detections` turns them into per-image results and keeps
  the best ``max_detections`` of each (the one step left outside the graph).
- other detection heads (``faster_rcnn``, ``rpn``): their own ``predict`` traced at batch 1 (their
  per-image proposal lists do not batch in a traced graph); the runtime feeds images one at a time.

Either way the export is checked against the eager head's ``predict``: the same number of
detections per image, equal labels, and boxes / scores within the tolerance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from edh.export.flatten import flatten
from edh.export.onnx import ExportCheckError, OnnxGraph, OutputCheck, compare, export_graph

MIN_SIZE = 1e-2  # `edh.ops.boxes.filter_detections`' default: boxes narrower than this are dropped


def is_detection(head: nn.Module) -> bool:
    return getattr(head, "task", "") == "detection" and callable(getattr(head, "predict", None))


def is_batched(head: nn.Module) -> bool:
    """True for heads whose post-processing `yolo_detections` reproduces with a dynamic batch axis."""
    from edh.heads.detection.yolo import YoloHead

    return isinstance(head, YoloHead)


def yolo_detections(head: nn.Module, outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """`YoloHead.predict` for a whole batch at once, in traceable ops.

    Args:
        head: a `YoloHead` (its thresholds, ``topk_candidates``, ``num_classes``).
        outputs: the head's raw outputs (``cls_logits`` ``(B, P, K)`` ...).

    Returns:
        ``boxes (M, 4)``, ``scores (M,)``, ``labels (M,)`` (1..K) and ``batch_index (M,)`` of every
        detection that survives class-wise NMS within its image, in decreasing score order.
    """
    grid = outputs["grid"]
    field = (lambda name: grid[name]) if isinstance(grid, dict) else (lambda name: getattr(grid, name))  # noqa: E731
    scores = torch.sqrt(outputs["cls_logits"].sigmoid() * outputs["centerness"].sigmoid()[..., None])  # (B, P, K)
    batch, locations, classes = scores.shape
    k = min(head.topk_candidates, locations * classes)
    top, index = scores.flatten(1).topk(k, dim=1)  # (B, k)
    location, label = index // classes, index % classes + 1
    regression = torch.gather(outputs["box_regression"], 1, location[..., None].expand(-1, -1, 4))  # (B, k, 4)
    location = location.reshape(-1)  # (B k,)
    boxes = head.decode(regression.reshape(-1, 4), field("points")[location], field("strides")[location])  # (B k, 4)
    boxes = clip_boxes_to_image(boxes, outputs["image_size"])
    top, label = top.reshape(-1), label.reshape(-1)
    image = torch.arange(batch, device=top.device)[:, None].expand(-1, k).reshape(-1)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = torch.where((top > head.score_thresh) & (width >= MIN_SIZE) & (height >= MIN_SIZE))[0]
    boxes, top, label, image = boxes[keep], top[keep], label[keep], image[keep]
    keep = batched_nms(boxes, top, image * (classes + 1) + label, head.nms_thresh)
    return {"boxes": boxes[keep], "scores": top[keep], "labels": label[keep], "batch_index": image[keep]}


def single_image_detections(head: nn.Module, outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A detection head's ``predict`` for a batch of one image, in ops that trace with data-dependent
    counts (``predict`` itself sizes its per-image splits with ``len()``, which a trace freezes).

    ``faster_rcnn``: softmax, per-class box decoding, then `edh.ops.boxes.filter_detections`, as
    `RoIHeads.postprocess`; ``rpn``: proposals above ``score_thresh``; any other head: its ``predict``.
    """
    import torch.nn.functional as F

    from edh.ops.boxes import filter_detections

    if hasattr(head, "roi") and "roi" in outputs:
        roi = outputs["roi"]
        scores = F.softmax(roi["class_logits"], -1)  # (R, K + 1)
        deltas = roi["box_regression"].reshape(scores.shape[0], -1, 4)
        region, label = torch.where(scores[:, 1:] > head.score_thresh)
        label = label + 1
        boxes = head.roi.box_coder.decode_single(deltas[region, label], roi["proposals"][0][region])
        return filter_detections(boxes, scores[region, label], label, roi["image_size"], head.score_thresh,
                                 head.nms_thresh, head.max_detections)
    if "proposals" in outputs and head.num_classes == 1:
        boxes, scores = outputs["proposals"][0], outputs["scores"][0]
        keep = torch.where(scores > head.score_thresh)[0][:head.max_detections]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": torch.ones_like(keep)}
    return head.predict(outputs)[0]


def split_detections(flat: dict[str, torch.Tensor], batch: int, max_detections: int) -> list[dict[str, torch.Tensor]]:
    """Flat batched detections -> per image ``{"boxes", "scores", "labels"}``, best ``max_detections`` first."""
    results = []
    for index in range(batch):
        rows = torch.where(flat["batch_index"] == index)[0]
        rows = rows[flat["scores"][rows].argsort(descending=True, stable=True)][:max_detections]
        results.append({k: flat[k][rows] for k in ("boxes", "scores", "labels")})
    return results


class WithPostprocess(nn.Module):
    """``images -> {head: outputs}`` where detection heads return detections instead of raw outputs.

    Args:
        model: the (prepared) edh `Model`.
        batched: True: yolo heads give flat batched detections (`yolo_detections`); False: every
            detection head gives its own ``predict`` for a single image.
    """

    def __init__(self, model: nn.Module, batched: bool) -> None:
        super().__init__()
        self.model = model
        self.batched = batched

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        outputs = self.model(images)
        for name, head in self.model.heads.items():
            if is_detection(head):
                outputs[name] = (yolo_detections(head, outputs[name]) if self.batched
                                 else single_image_detections(head, outputs[name]))
        return outputs


class GraphDetections(nn.Module):
    """Stands in for a detection head whose post-processing ran in the graph: ``predict`` returns the
    graph's per-image detections; printing, drawing and COCO records are the head's own."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.task = head.task

    def predict(self, outputs: Any, **meta: Any) -> Any:
        return outputs

    def format_prediction(self, prediction: Any, index: int) -> str:
        return self.head.format_prediction(prediction, index)

    def write_predictions(self, *args: Any, **kwargs: Any) -> Any:
        return self.head.write_predictions(*args, **kwargs)

    def prediction_records(self, *args: Any, **kwargs: Any) -> Any:
        return self.head.prediction_records(*args, **kwargs)


def run_with_postprocess(graph: OnnxGraph, images: torch.Tensor, heads: dict[str, nn.Module]) -> dict[str, Any]:
    """Run an exported graph with post-processing in it: per detection head a list of per-image
    detections (other heads: their raw outputs, concatenated over images for batch-1 graphs)."""
    if graph.metadata.get("batch") == 1:
        per_image = [graph(images[i:i + 1]) for i in range(len(images))]
        outputs: dict[str, Any] = {}
        for name, head in heads.items():
            values = [o[name] for o in per_image]
            outputs[name] = values if is_detection(head) else _cat(values)
        return outputs
    outputs = graph(images)
    for name, head in heads.items():
        if is_detection(head):
            outputs[name] = split_detections(outputs[name], len(images), head.max_detections)
    return outputs


def _cat(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values) if first.ndim and first.shape[0] == 1 else first
    if isinstance(first, dict):
        return {k: _cat([v[k] for v in values]) for k in first}
    return first


def _match(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """For each detection of ``a`` (best first), the closest unmatched detection of ``b`` with the same
    label (by box distance, then score), so near-equal scores in another order still pair up; None
    when some detection has no partner of its label."""
    order = a["scores"].argsort(descending=True, stable=True)
    free = torch.ones(len(b["boxes"]), dtype=torch.bool)
    pairs = torch.empty(len(order), dtype=torch.long)
    for i in order.tolist():
        same = torch.where(free & (b["labels"].long() == int(a["labels"][i])))[0]
        if not len(same):
            return None
        cost = (b["boxes"][same] - a["boxes"][i]).abs().amax(1) + (b["scores"][same] - a["scores"][i]).abs()
        j = int(same[cost.argmin()])
        pairs[i], free[j] = j, False
    return pairs


def compare_detections(eager: list[dict[str, torch.Tensor]], runtime: list[dict[str, torch.Tensor]], name: str,
                       tolerance: float) -> list[OutputCheck]:
    """Per-image detections must agree: equal counts, each eager detection paired with one of the
    same label, and paired boxes (relative to their size in pixels) and scores within ``tolerance``."""
    box_diff = score_diff = 0.0
    scale = 1.0
    total = 0
    for index, (a, b) in enumerate(zip(eager, runtime)):
        if len(a["boxes"]) != len(b["boxes"]):
            raise ExportCheckError(f"{name}: image {index} has {len(a['boxes'])} detections in eager PyTorch but "
                                   f"{len(b['boxes'])} from onnxruntime")
        if not len(a["boxes"]):
            continue
        pairs = _match(a, b)
        if pairs is None:
            raise ExportCheckError(f"{name}: image {index} detections have other labels from onnxruntime than in "
                                   "eager PyTorch")
        box_diff = max(box_diff, float((a["boxes"] - b["boxes"][pairs]).abs().max()))
        score_diff = max(score_diff, float((a["scores"] - b["scores"][pairs]).abs().max()))
        scale = max(scale, float(a["boxes"].abs().max()))
        total += len(a["boxes"])
    checks = [OutputCheck(f"{name}.boxes ({total} detections)", box_diff, scale, (total, 4)),
              OutputCheck(f"{name}.scores", score_diff, 1.0, (total,))]
    bad = [c for c in checks if not c.ok(tolerance)]
    if bad:
        raise ExportCheckError(f"{name}: detections differ from eager PyTorch: " + "; ".join(
            f"{c.name} max abs diff {c.max_abs_diff:.3g}" for c in bad) + f" > tolerance {tolerance:g}")
    return checks


def export_with_nms(run: Any, model: nn.Module, reference: nn.Module, example: torch.Tensor, probe: torch.Tensor,
                    out: Any, opset: int, tolerance: float, metadata: dict[str, Any], notes: list[str]):
    """Export ``model`` with its detection heads' post-processing in the graph; check it against
    ``reference`` (the run's eager model) on ``probe`` images."""
    from edh.export.runs import ExportReport

    heads = [name for name, head in model.heads.items() if is_detection(head)]
    if not heads:
        raise ExportCheckError(f"{run.path}: --nms needs a detection head; this model's heads are "
                               f"{', '.join(model.heads) or 'none'}")
    batched = all(is_batched(model.heads[n]) for n in heads)
    wrapper = WithPostprocess(model, batched).eval()
    metadata = {**metadata, "nms": True, "nms_heads": heads, "batch": None if batched else 1}
    if batched:
        export_graph(wrapper, (example,), out, ["images"], opset, probe=(probe,),
                     dynamic_axes={f"{n}.{k}": {0: "detections"} for n in heads
                                   for k in ("boxes", "scores", "labels", "batch_index")},
                     metadata=metadata)
    else:
        notes.append(f"post-processing of {', '.join(heads)} traced at batch 1 (per-image proposals): "
                     "onnxruntime runs one image at a time")
        export_graph(wrapper, (example[:1],), out, ["images"], opset, metadata=metadata)
    graph = OnnxGraph(out)
    runtime = run_with_postprocess(graph, probe, dict(model.heads))
    with torch.inference_mode():
        eager = reference(probe)
    checks = []
    for name, head in reference.heads.items():
        if name in heads:
            checks += compare_detections(head.predict(eager[name]), runtime[name], name, tolerance)
        else:  # another task's head in the same graph (multi-task): its raw outputs
            names, expected, _ = flatten(eager[name], name)
            checks += [c for c in compare(expected, names, flatten(runtime[name], name)[1])]
    bad = [c for c in checks if not c.ok(tolerance)]
    if bad:
        raise ExportCheckError(f"{out} does not match eager PyTorch: " + "; ".join(
            f"{c.name} max abs diff {c.max_abs_diff:.3g}" for c in bad) + f" > tolerance {tolerance:g}")
    notes.append(f"detections in graph for {', '.join(heads)}: equal to eager predict on {len(probe)} images")
    return ExportReport([out], {out.name: checks}, notes)
