"""The Head contract: features of one source in, one task's outputs, loss, metrics and predictions out.

A head is its task, end to end. Train, evaluate, predict, export, demo, describe, diagram and head
surgery call only what this class declares; a head that has nothing to say for one of them keeps
the default. A new head type is one file that subclasses `Head` plus ``@register_head("name")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edh.core.features import FeatureSpec


class Head(nn.Module):
    """Maps features to one task's result.

    Built from the `FeatureSpec` of its source (``in_spec``). What a subclass implements:

    - ``forward(features, **context)``: raw outputs (logits, maps, ...). ``context`` holds
      ``input_size`` (the ``(H, W)`` of an image input) and, when training, ``targets``.
    - ``select_targets(targets, key)``: this head's targets out of the batch (default ``targets[key]``).
    - ``loss(outputs, targets) -> dict[str, Tensor]``: named loss terms.
    - ``make_metrics(stage)`` / ``update_metrics(metrics, outputs, targets)`` / ``summarize``: a
      torchmetrics object, how to feed it, and its computed values as a report (validation, ``edh eval``).
    - ``predict(outputs, **meta)``: post-processed predictions (probabilities, masks, boxes, tokens).
      ``meta`` holds ``input_size`` and ``inputs`` (the model input batch) and options such as ``top_k``.
    - ``postprocess(outputs)``: the traceable part of ``predict`` that ONNX export puts in the graph
      (``export_postprocess``), and ``from_postprocessed`` turning the graph's result back into what
      ``predict`` returns: one implementation for eager and exported prediction. ``align_predictions``
      pairs up two predictions (eager, exported) so the export check compares them tensor by tensor.
    - ``format_prediction`` / ``write_predictions`` / ``prediction_records``: what ``edh predict``,
      ``edh eval`` and the demo print, draw and write (``picture_description``: what the drawing shows, in
      words; ``prediction_json``: the answer of ``edh serve``); ``prediction_settings`` (thresholds, caps:
      shown by ``describe`` and ``predict``, changed by ``set_prediction_settings``) and
      ``prediction_notes`` (warnings about a result, e.g. a cap reached).
    - ``merge_tiles``: with ``tiling`` ``"boxes"``, one image's detections from its tiles, merged.
    - ``bind_data(info)``: the run's data description (normalisation, class names), given once by the
      workflows before metrics or pictures are made.
    - ``transfer_from(trained)``: head surgery, carrying weights over from a trained head of the same name.

    Attributes:
        accepts: the `FeatureSpec` kinds this head can be built on.
        task: a short word for what the head does (``classification``, ``segmentation``...).
        function: one line for ``describe`` and ``diagram``: what the head computes.
        reads_level: the pyramid level the head reads when given a whole pyramid (``-1``: the
            deepest), or None when it reads every level; ``describe`` and ``diagram`` show that level.
        branches: named sub-modules ``describe`` shows as rows of their own (``{"roi.box_head": "..."}``).
        export_postprocess: ``postprocess`` can be traced into an ONNX graph with a dynamic batch
            axis (``"batched"``), only one image at a time (``"single"``), or not at all (None: the
            graph gives raw outputs and the eager ``predict`` runs on them). A ``"single"`` head's
            ``postprocess`` returns a list with one entry per image; the graph runs once per image and
            ``from_postprocessed`` gets the entries of all images, in order.
        export_raw: the raw outputs (``forward``'s) can be an ONNX graph's outputs with a dynamic batch
            axis. False (e.g. per-image lists of proposals): export always puts ``postprocess`` in
            the graph, so such a head needs ``export_postprocess``.
        class_names: the names of the classes the head predicts (classification, segmentation,
            detection), or None for a head without classes.
        target_key: the batch target the head learns from (its spec's ``target``, else its name); set
            by `Model.bind_data` before ``bind_data`` runs, so a head can check the data's target.
        generates: the head turns decoder features into token logits (``logits``) for step-by-step
            generation (`edh.ops.generation`); ``generation_defaults`` gives its search settings.
        tiling: how the head's outputs are stitched when the model runs on overlapping tiles of
            a large image (`edh.ops.tiling`): ``"blend"`` (the output is a per-pixel map
            ``(B, K, H, W)`` at the input's resolution; overlaps are blended with weights that fall
            off towards tile borders), ``"boxes"`` (``predict`` gives per image ``boxes`` xyxy in
            input pixels, ``scores``, ``labels``: each tile's are shifted to image pixels and
            ``merge_tiles`` merges them across tile borders), or None (the head cannot run tiled).
            A model is tileable when every head it runs has a tiling; ``"blend"`` also lets
            ``edh predict`` up-sample the map back to an image's own size when the run resized it.
    """

    accepts: tuple[str, ...] = ("pyramid", "sequence", "vector")
    task: str = "generic"
    function: str = "map features to the task's output"
    reads_level: int | None = None
    branches: dict[str, str] = {}
    export_postprocess: str | None = None
    export_raw: bool = True
    generates: bool = False
    target_key: str | None = None
    class_names: list[str] | None = None
    tiling: str | None = None

    def __init__(self, in_spec: FeatureSpec) -> None:
        super().__init__()
        self.in_spec = in_spec

    # ---- training ---------------------------------------------------------------------------------
    def forward(self, features: Any, **context: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def select_targets(self, targets: dict[str, Any], key: str) -> Any:
        """This head's targets out of the batch's target dict; ``key`` is the head spec's ``target``
        (default: the head's name). Most heads read ``targets[key]``; a head that learns from several
        entries (detection: ``boxes`` and ``labels``) overrides this. A missing entry raises
        ``KeyError(entry)``. The workflows add the model input as ``targets["inputs"]``."""
        return targets[key]

    def loss(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def bind_data(self, info: Any) -> None:
        """Called by the workflows with the run's `edh.data.base.DataInfo` (``mean`` / ``std``,
        ``class_names``, ``image_size``...) before metrics, predictions or pictures are made. A head
        that checks the data against its options raises a `SpecError` here. Default: nothing."""

    # ---- metrics ----------------------------------------------------------------------------------
    def make_metrics(self, stage: str = "val") -> Any:
        """Metrics for ``stage`` (``val`` during training; ``test`` may add per-class detail), or None."""
        return None

    def update_metrics(self, metrics: Any, outputs: Any, targets: Any) -> None:
        pass

    def summarize(self, values: dict[str, torch.Tensor], out_dir: Path | None = None) -> tuple[dict[str, float], list[str]]:
        """Computed metric values -> (scalars, extra report lines); may write plots to ``out_dir``.

        Scalars named ``figure/<class>`` (``iou/cat``) are per-class detail: ``edh eval --json`` carries
        them, one-line summaries leave them out (`headline`)."""
        return {k: float(v) for k, v in values.items() if v.numel() == 1}, []

    # ---- prediction -------------------------------------------------------------------------------
    def predict(self, outputs: Any, **meta: Any) -> Any:
        """Post-processed predictions. Default: ``from_postprocessed(postprocess(outputs))``."""
        return self.from_postprocessed(self.postprocess(outputs), **meta)

    def postprocess(self, outputs: Any) -> Any:
        """The traceable post-processing (tensors in, tensors out) shared by ``predict`` and an ONNX
        graph with post-processing in it. Default: the raw outputs."""
        return outputs

    def from_postprocessed(self, result: Any, **meta: Any) -> Any:
        """What ``predict`` returns, from ``postprocess``'s result (eager, or read back from an ONNX
        graph: then ``meta["batch_size"]`` gives the number of images). Default: the result itself."""
        return result

    def align_predictions(self, reference: Any, other: Any) -> tuple[Any, Any]:
        """Two ``predict`` results for the same inputs (eager PyTorch's, and another backend's such as
        an ONNX graph with ``postprocess`` in it) as two trees of tensors that compare leaf by leaf:
        the same structure, entries in matching order. Raise ``ValueError`` saying why when they do
        not pair up (e.g. other numbers of detections). Default: both as they are."""
        return reference, other

    def merge_tiles(self, found: dict[str, torch.Tensor], merge: str = "nms") -> Any:
        """Tiling ``"boxes"``: one image's prediction from the detections of all its tiles, gathered in
        image pixels (``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}``); ``merge`` is ``"nms"`` or
        ``"wbf"`` (`edh.ops.tiling.merge_detections`). Returns one entry of ``predict``'s list."""
        raise NotImplementedError(f"{type(self).__name__} has tiling {self.tiling!r}: it does not merge tiles' boxes")

    def prediction_settings(self) -> dict[str, Any]:
        """The options that shape ``predict``'s result (thresholds, caps: detection's ``score_thresh``,
        ``nms_thresh``, ``max_detections``), as ``edh describe`` shows them and ``edh predict`` prints
        them once. Default: none."""
        return {}

    def set_prediction_settings(self, **values: Any) -> None:
        """Change some of `prediction_settings` for this session (``edh predict --max-detections N``).
        Default: each one set as the attribute of its name; a name not among them is a ``ValueError``."""
        known = self.prediction_settings()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no prediction setting {', '.join(unknown)} (it has: "
                             f"{', '.join(known) or 'none'})")
        for name, value in values.items():
            setattr(self, name, value)

    def prediction_notes(self, prediction: Any, paths: list[Path], name: str = "head") -> list[str]:
        """Warnings about ``predict``'s result for the inputs at ``paths`` that ``edh predict`` shows
        (detection: an image whose detections reached ``max_detections``); ``name`` is the head's name
        in the model. Default: none."""
        return []

    def format_prediction(self, prediction: Any, index: int) -> str:
        """One line describing sample ``index`` of ``predict``'s result (for ``edh predict``)."""
        return ""

    def prediction_json(self, prediction: Any, index: int, source: Path | None = None,
                        input_size: tuple[int, int] | None = None) -> dict[str, Any]:
        """Sample ``index`` of ``predict``'s result as plain JSON values, for ``edh serve``: labels and
        probabilities, boxes in the image file's pixels, masks as PNG, text. ``source``: the input's file
        (None for a sentence); ``input_size``: ``(H, W)`` the model saw. Default: the printed line."""
        return {"line": self.format_prediction(prediction, index)}

    def write_predictions(self, prediction: Any, images: torch.Tensor, paths: list[Path], out_dir: Path) -> list[Path]:
        """Write pictures of the predictions (overlays, boxes) to ``out_dir``; return the files written."""
        return []

    def picture_description(self) -> str:
        """What ``write_predictions``' pictures show, in a few words, for captions (the demo report)."""
        return ""

    def prediction_records(self, prediction: Any, paths: list[Path], input_size: tuple[int, int],
                           info: Any = None) -> list[dict[str, Any]]:
        """JSON-ready records of these predictions (detection: COCO results) for the images at
        ``paths`` (model input ``input_size``; ``info`` is the run's `DataInfo`; ``edh predict`` puts
        each image's id, file name -> id, into ``info.extra["image_ids"]``). ``edh predict --out``
        gathers them over all images into ``OUT/<head>.json``. Default: none."""
        return []

    # ---- generation -------------------------------------------------------------------------------
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` decoder features -> ``(..., V)`` token logits (heads with ``generates``)."""
        raise NotImplementedError(f"head {type(self).__name__} does not generate tokens")

    def generation_defaults(self) -> dict[str, Any]:
        """``beam_size``, ``length_penalty``, ``max_new_tokens`` for generation (heads with ``generates``)."""
        return {"beam_size": 1, "length_penalty": 1.0, "max_new_tokens": None}

    # ---- head surgery -----------------------------------------------------------------------------
    def transfer_from(self, trained: "Head") -> str | None:
        """Carry weights over from ``trained`` (the head of the same name in a trained model) when
        tensors of equal name and shape would be wrong to copy as they are (e.g. classes renamed or
        reordered). Return a report line when this head took care of its weights, or None to let
        head surgery copy every tensor whose name and shape match. Default: None."""
        return None


def headline(values: dict[str, float]) -> dict[str, float]:
    """A head's summary scalars without the per-class detail (keys ``figure/<class>``): what one line shows."""
    return {key: value for key, value in values.items() if "/" not in key}
