"""Heads with their post-processing inside the ONNX graph (``edh export --nms``).

A head that declares ``export_postprocess`` (`edh.heads.base.Head`) puts its ``postprocess`` in the
graph (detection heads: score filtering, box decoding, NMS, which exports as ONNX
``NonMaxSuppression``); the runtime side gives the graph's result to the head's
``from_postprocessed``, so eager ``predict`` and the exported graph run one implementation.

- ``"batched"`` heads (``fcos``, ``yolo``): the graph keeps a dynamic batch axis (the post-processed outputs get
  a dynamic first axis of their own: their counts depend on the data).
- ``"single"`` heads (``faster_rcnn``, ``rpn``: per-image proposal lists do not batch in a traced
  graph): the whole graph is traced at batch 1 and the runtime feeds the images one at a time (a
  ``"batched"`` head in the same graph then post-processes image by image too).

Heads without ``export_postprocess`` in the same graph (multi-task) give their raw outputs. The
export is checked against the eager model: each post-processed head's ``predict`` against
``from_postprocessed`` of the graph's result, paired up by the head's ``align_predictions`` and
compared tensor by tensor within the tolerance; every other head's raw outputs as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edh.export.flatten import flatten
from edh.export.onnx import (ExportCheckError, ExportError, ExportReport, OnnxGraph, OutputCheck, compare,
                             export_graph)
from edh.heads.base import Head


def postprocessed_heads(model: nn.Module) -> list[str]:
    """The heads of ``model`` whose ``postprocess`` can go in a graph (``export_postprocess`` set)."""
    return [name for name, head in model.heads.items() if head.export_postprocess is not None]


class WithPostprocess(nn.Module):
    """``images -> {head: outputs}`` where the heads in ``heads`` return ``postprocess(outputs)``.

    Args:
        model: the (prepared) edh `Model`.
        heads: names of the heads whose post-processing goes in the graph.
    """

    def __init__(self, model: nn.Module, heads: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(heads)

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        outputs = self.model(images)
        for name in self.names:
            outputs[name] = self.model.heads[name].postprocess(outputs[name])
        return outputs


class Postprocessed(Head):
    """Stands in for a head whose post-processing ran in the graph: ``predict`` returns what the
    runner made of the graph's result (`run_with_postprocess`) as it is; everything else (printing,
    drawing, records, pairing predictions) is the head's own."""

    def __init__(self, head: Head) -> None:
        super().__init__(head.in_spec)
        self.head = head
        self.task, self.function = head.task, head.function
        self.export_postprocess, self.export_raw = head.export_postprocess, head.export_raw

    def predict(self, outputs: Any, **meta: Any) -> Any:
        return outputs

    def from_postprocessed(self, result: Any, **meta: Any) -> Any:
        return self.head.from_postprocessed(result, **meta)

    def align_predictions(self, reference: Any, other: Any) -> tuple[Any, Any]:
        return self.head.align_predictions(reference, other)

    def bind_data(self, info: Any) -> None:
        self.head.bind_data(info)

    def format_prediction(self, prediction: Any, index: int) -> str:
        return self.head.format_prediction(prediction, index)

    def write_predictions(self, *args: Any, **kwargs: Any) -> Any:
        return self.head.write_predictions(*args, **kwargs)

    def prediction_records(self, *args: Any, **kwargs: Any) -> Any:
        return self.head.prediction_records(*args, **kwargs)

    def prediction_settings(self) -> dict[str, Any]:
        return self.head.prediction_settings()

    def set_prediction_settings(self, **values: Any) -> None:
        """The head's own; a cap the graph applied itself (a ``single`` head's NMS) cannot be raised here."""
        self.head.set_prediction_settings(**values)

    def prediction_notes(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.head.prediction_notes(*args, **kwargs)


def run_with_postprocess(graph: OnnxGraph, images: torch.Tensor, heads: dict[str, Head]) -> dict[str, Any]:
    """Run an exported graph with post-processing in it: per post-processed head (the graph's
    ``postprocess_heads``) its ``from_postprocessed`` of the graph's result, i.e. its predictions;
    other heads: their raw outputs (concatenated over the images for batch-1 graphs)."""
    post = set(graph.metadata.get("postprocess_heads", []))
    if graph.metadata.get("batch") == 1:
        per_image = [graph(images[i:i + 1]) for i in range(len(images))]
        outputs: dict[str, Any] = {}
        for name, head in heads.items():
            values = [o[name] for o in per_image]
            if name not in post:
                outputs[name] = _cat(values)
            elif head.export_postprocess == "single":  # a list per image: one entry each
                outputs[name] = head.from_postprocessed([entry for value in values for entry in value],
                                                        batch_size=len(images))
            else:  # a batched head in a graph that another head keeps at batch 1: image by image
                outputs[name] = _join([head.from_postprocessed(value, batch_size=1) for value in values])
        return outputs
    outputs = graph(images)
    for name, head in heads.items():
        if name in post:
            outputs[name] = head.from_postprocessed(outputs[name], batch_size=len(images))
    return outputs


def _join(predictions: list[Any]) -> Any:
    """Predictions of one image each -> the batch's: lists (one entry per image) concatenated, tensors
    along their batch axis, dicts key by key."""
    first = predictions[0]
    if isinstance(first, list):
        return [entry for prediction in predictions for entry in prediction]
    if isinstance(first, torch.Tensor):
        return torch.cat(predictions)
    if isinstance(first, dict):
        return {k: _join([p[k] for p in predictions]) for k in first}
    return first


def _cat(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values) if first.ndim and first.shape[0] == 1 else first
    if isinstance(first, dict):
        return {k: _cat([v[k] for v in values]) for k in first}
    return first


def compare_predictions(head: Head, eager: Any, runtime: Any, name: str) -> list[OutputCheck]:
    """One `OutputCheck` per tensor of the two predictions, paired by ``head.align_predictions``."""
    try:
        reference, other = head.align_predictions(eager, runtime)
    except ValueError as error:
        raise ExportCheckError(f"{name}: onnxruntime's predictions do not pair up with eager PyTorch's "
                               f"(the reference): {error}") from None
    names, expected, _ = flatten(reference, name)
    return compare(expected, names, flatten(other, name)[1])


def export_with_postprocess(run: Any, model: nn.Module, reference: nn.Module, example: torch.Tensor,
                            probe: torch.Tensor, out: Any, opset: int, tolerance: float, metadata: dict[str, Any],
                            notes: list[str]):
    """Export ``model`` with its heads' post-processing in the graph (`postprocessed_heads`); check it
    against ``reference`` (the run's eager model) on ``probe`` images."""

    postprocessing = postprocessed_heads(model)
    if not postprocessing:
        raise ExportError(f"{run.path}: --nms puts heads' post-processing in the graph, but none of this model's "
                          f"heads ({', '.join(model.heads) or 'none'}) has any to export (e.g. a detection head)")
    stuck = [n for n, h in model.heads.items() if not h.export_raw and n not in postprocessing]
    if stuck:
        raise ExportError(f"{', '.join(stuck)}: the raw outputs cannot be exported with a batch axis and the head "
                          "declares no post-processing to export (export_postprocess)")
    batched = all(model.heads[n].export_postprocess == "batched" for n in postprocessing)
    wrapper = WithPostprocess(model, postprocessing).eval()
    metadata = {**metadata, "nms": True, "postprocess_heads": postprocessing, "batch": None if batched else 1}
    inputs = example if batched else example[:1]
    with torch.inference_mode():
        traced = wrapper(inputs)
    counts = {output: {0: f"{output}.rows"} for n in postprocessing
              for output, value in zip(*flatten(traced[n], n)[:2]) if value.ndim}  # data-dependent counts
    if batched:
        export_graph(wrapper, (inputs,), out, ["images"], opset, probe=(probe,), dynamic_axes=counts,
                     metadata=metadata)
    else:
        notes.append(f"post-processing of {', '.join(postprocessing)} traced at batch 1 (per-image outputs): "
                     "onnxruntime runs one image at a time")
        export_graph(wrapper, (inputs,), out, ["images"], opset, dynamic_axes=counts, metadata=metadata)
    graph = OnnxGraph(out)
    runtime = run_with_postprocess(graph, probe, dict(model.heads))
    with torch.inference_mode():
        eager = reference(probe)
    size = tuple(probe.shape[-2:])
    checks = []
    for name, head in reference.heads.items():
        if name in postprocessing:
            checks += compare_predictions(head, head.predict(eager[name], input_size=size, inputs=probe),
                                          runtime[name], name)
        else:  # another head in the same graph (multi-task): its raw outputs
            names, expected, _ = flatten(eager[name], name)
            checks += compare(expected, names, flatten(runtime[name], name)[1])
    bad = [c for c in checks if not c.ok(tolerance)]
    if bad:
        raise ExportCheckError(f"{out} does not match eager PyTorch: " + "; ".join(
            f"{c.name} max abs diff {c.max_abs_diff:.3g}" for c in bad) + f" > tolerance {tolerance:g}")
    notes.append(f"post-processing in graph for {', '.join(postprocessing)}: predictions equal to eager predict on "
                 f"{len(probe)} images")
    return ExportReport([out], {out.name: checks}, notes)
