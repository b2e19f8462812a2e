"""A run folder -> ONNX files, checked against eager PyTorch; and a run backed by onnxruntime.

Families:

- image models (classifier, U-Net, autoencoder / VAE, YOLO-style detector, multi-task): one graph
  ``images (B, C, H, W) -> every head's raw outputs`` (`export_image_run`), with dynamic height and
  width where the encoder allows it and the graph follows another size (`size_axes`); with ``nms`` the
  post-processing of the heads that declare one (``Head.export_postprocess``: detection heads'
  NMS) is in the graph too, and heads whose raw outputs do not batch (``Head.export_raw`` False)
  always export that way (`edh.export.postprocess`).
- translators (step-wise decoder + ``lm`` head): an encoder graph and a decoder-step graph with
  its cache (`edh.export.generation`, over the `StepDecoder` contract).

Every export folds BatchNorm into the preceding convs (`edh.utils.perf.fold_batchnorm`), keeps only
the chosen heads (`Model.remove_heads`), and is checked with onnxruntime against the run's own
eager model at another batch size than the traced one.

Example:
    >>> report = export_run("runs/digits", heads=["label"])
    >>> report.lines()
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edh.export.onnx import (CHECK_BATCH, DEFAULT_OPSET, DEFAULT_TOLERANCE, TRACE_BATCH, ExportError, ExportReport,
                             OnnxGraph, check_graph,
                             export_graph)
from edh.workflows.run import Run, load_run
from edh.version import __version__

log = logging.getLogger("edh")

ONNX_FILE = "model.onnx"


def count_batchnorm(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def prepare_model(model: nn.Module, heads: list[str] | None = None, fold_bn: bool = True) -> nn.Module:
    """A copy of ``model`` for export: eval mode, only ``heads`` kept, BatchNorm folded into convs."""
    from edh.utils.perf import fold_batchnorm

    prepared = copy.deepcopy(model).eval()
    if heads:
        prepared.remove_heads(list(heads))
    return fold_batchnorm(prepared) if fold_bn else prepared


def sample_images(run: Run, count: int, size: tuple[int, int], offset: int = 0) -> torch.Tensor:
    """``count`` test images of the run's data ``(count, C, H, W)`` (so detection heads see objects),
    or standard-normal images when the data cannot be rebuilt here."""
    try:
        from edh.data.base import build_data

        bundle = build_data(run.spec.data.name, run.spec.data.options(), run.spec.data.seed)
        split = bundle.test if len(bundle.test) >= offset + count else bundle.train
        images = torch.stack([split[offset + i][0] for i in range(count)]).float()
        if tuple(images.shape[-2:]) == tuple(size) and images.shape[1] == run.info.in_channels:
            return images
    except Exception as error:  # noqa: BLE001 - any failure means "use random inputs"
        log.debug("export: using random inputs (%s: %s)", type(error).__name__, error)
    generator = torch.Generator().manual_seed(offset)
    return torch.randn(count, run.info.in_channels, *size, generator=generator)


def image_size_of(run: Run, input_size: tuple[int, int] | None) -> tuple[int, int]:
    if input_size is not None:
        return tuple(input_size)
    if run.info.image_size:
        return tuple(run.info.image_size)
    raise ExportError(f"{run.path}: the run keeps each image's own size; give the size to export for with "
                      "--input-size H W")


def export_image_run(run: Run, out: Path, heads: list[str] | None = None, opset: int = DEFAULT_OPSET,
                     tolerance: float = DEFAULT_TOLERANCE, fold_bn: bool = True, nms: bool = False,
                     input_size: tuple[int, int] | None = None) -> ExportReport:
    """``images (B, C, H, W) -> outputs`` of every kept head (or the decoder), as one ONNX graph.

    Height and width are dynamic where the encoder says so (``Encoder.input_axes``) and the graph
    then matches eager PyTorch at another size too (`size_axes`); otherwise, and for graphs with
    post-processing in them (detection), they stay the traced size, and the report says which.
    """
    size = image_size_of(run, input_size)
    model = prepare_model(run.model, heads, fold_bn)
    reference = copy.deepcopy(run.model).eval()
    if heads:
        reference.remove_heads(list(heads))
    folded = count_batchnorm(reference) - count_batchnorm(model)
    example, probe = sample_images(run, TRACE_BATCH, size), sample_images(run, CHECK_BATCH, size, TRACE_BATCH)
    try:
        with torch.inference_mode():
            reference(example[:1])
    except (RuntimeError, ValueError) as error:  # e.g. a conv kernel larger than the input
        raise ExportError(f"{run.path}: the model does not run on {size[0]}x{size[1]} inputs ({error}); export "
                          "for a larger --input-size") from None
    metadata = {"edh_version": __version__, "kind": "image", "input_size": list(size),
                "in_channels": run.info.in_channels, "heads": list(model.heads), "nms": nms, "fold_bn": fold_bn,
                "dynamic_size": False}
    notes = [f"BatchNorm folded: {folded} of {count_batchnorm(reference)} layers" if fold_bn else "BatchNorm kept"]
    unbatched = [n for n, h in model.heads.items() if not h.export_raw]
    if unbatched and not nms:
        notes.append(f"{', '.join(unbatched)}: exported with post-processing in the graph (as --nms): its raw "
                     "outputs do not batch (e.g. per-image proposal lists)")
        nms = True
    if nms:
        from edh.export.postprocess import export_with_postprocess

        notes.append(f"input size fixed at {size[0]}x{size[1]}: the post-processing in the graph is traced at it")
        return export_with_postprocess(run, model, reference, example, probe, out, opset, tolerance, metadata,
                                       notes)
    other = other_size(run.model, size)
    axes, why = size_axes(reference, example, other)
    if axes is not None:
        export_graph(model, (example,), out, ["images"], opset, probe=(probe,), dynamic_axes=axes,
                     metadata={**metadata, "dynamic_size": True})
        checks = check_graph(out, reference, (probe,), tolerance)
        try:
            at_other = check_graph(OnnxGraph(out, quiet=True), reference, (_random_images(run, other),), tolerance)
        except Exception as error:  # noqa: BLE001 - onnxruntime's own errors too: the graph baked in a size
            why = f"the graph traced with dynamic height and width does not follow another size ({_first_line(error)})"
        else:
            notes.append(f"dynamic height and width: also checked at {other[0]}x{other[1]}, max abs diff vs eager "
                         f"{max((c.max_abs_diff for c in at_other), default=0.0):.3g}")
            return ExportReport([out], {out.name: checks}, notes)
    notes.append(f"input size fixed at {size[0]}x{size[1]}: {why}")
    export_graph(model, (example,), out, ["images"], opset, probe=(probe,), metadata=metadata)
    checks = check_graph(out, reference, (probe,), tolerance)
    return ExportReport([out], {out.name: checks}, notes)


def other_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """A second input size to check a graph with dynamic height and width at: larger than ``size`` and
    no multiple of the encoder's deepest stride, so every rounding and crop of odd sizes is in it."""
    stride = max(model.encoder.out_spec.strides or (32,))  # a sequence or vector encoder has no strides
    return size[0] + stride + 1, size[1] + stride // 2 + 1


def _random_images(run: Run, size: tuple[int, int]) -> torch.Tensor:
    return torch.randn(CHECK_BATCH, run.info.in_channels, *size, generator=torch.Generator().manual_seed(7))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def size_axes(reference: nn.Module, example: torch.Tensor,
              other: tuple[int, int]) -> tuple[dict[str, dict[int, str]] | None, str]:
    """The dynamic height / width axes of the image graph: ``{"images": {2: "height", 3: "width"}}`` (as the
    encoder's ``input_axes`` has them) and, per output, each axis whose length follows the input size
    between eager runs at the traced size and at ``other``. ``(None, why)`` when the encoder takes one
    size only, or the model does not run at ``other`` or gives other outputs there."""
    from edh.export.flatten import flatten

    dims = {axis: label for axis, label in reference.encoder.input_axes.items() if axis in (2, 3)}
    if not dims:
        return None, f"the encoder {type(reference.encoder).__name__} takes one image size (Encoder.input_axes)"
    images = torch.randn(example.shape[0], example.shape[1], *other, generator=torch.Generator().manual_seed(3))
    try:
        with torch.inference_mode():
            traced, moved = flatten(reference(example))[:2], flatten(reference(images))[1]
    except (RuntimeError, ValueError, AssertionError) as error:  # e.g. a ViT's fixed position embeddings
        return None, f"the model does not run at {other[0]}x{other[1]} ({_first_line(error)})"
    names, first = traced
    if len(first) != len(moved) or any(a.ndim != b.ndim for a, b in zip(first, moved)):
        return None, f"the model gives other outputs at {other[0]}x{other[1]}"
    axes: dict[str, dict[int, str]] = {"images": dims}
    for name, a, b in zip(names, first, moved):
        grown = {axis: f"{name}_{axis}" for axis in range(1, a.ndim) if a.shape[axis] != b.shape[axis]}
        if grown:
            axes[name] = grown
    return axes, ""


def export_run(run: Run | str | Path, out: str | Path | None = None, heads: list[str] | None = None,
               opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE, fold_bn: bool = True,
               nms: bool = False, input_size: tuple[int, int] | None = None) -> ExportReport:
    """Export a run folder's model to ONNX and check it against eager PyTorch with onnxruntime.

    Args:
        run: a run folder or a loaded `Run`.
        out: the ONNX file (default ``RUNDIR/model.onnx``; a translator also writes
            ``<stem>.decoder_step.onnx`` beside it).
        heads: keep only these heads (default: all).
        opset: ONNX opset version.
        tolerance: the largest allowed ``max abs diff / max(1, max |eager value|)`` per output.
        fold_bn: fold BatchNorm into the preceding convs.
        nms: put the post-processing of the heads that declare one (``Head.export_postprocess``:
            detection heads' score filtering and NMS) in the graph.
        input_size: ``(H, W)`` to export for, when the run keeps each image's own size.

    Raises:
        ExportCheckError: an output differs from eager PyTorch by more than ``tolerance``.
    """
    from edh.export.onnx import require_onnx
    from edh.ops.generation import generates
    from edh.workflows.inputs import reader_for

    require_onnx()
    run = run if isinstance(run, Run) else load_run(run)
    out = Path(out) if out else Path(run.path) / ONNX_FILE
    if out.suffix != ".onnx":
        raise ExportError(f"--out {out} must end in .onnx")
    if generates(run.model):  # a step decoder: an encoder graph and a decoder-step graph
        from edh.export.generation import export_seq2seq

        return export_seq2seq(run, out, heads, opset, tolerance)
    if not reader_for(run).exportable:
        raise ExportError(f"{run.path}: exporting models of {run.info.input_kind!r} inputs as one graph is not "
                          "supported yet (image models and generating models are)")
    return export_image_run(run, out, heads, opset, tolerance, fold_bn, nms, input_size)


class OnnxImageModel(nn.Module):
    """Stands in for a run's `Model` in ``predict``: onnxruntime computes the heads' raw outputs, the
    run's eager heads post-process them (``heads``, ``head_specs``, ``tasks`` as in `Model`); heads
    whose post-processing is in the graph give its result through their ``from_postprocessed``
    (`edh.export.postprocess.Postprocessed`).

    Args:
        graph: the exported image graph.
        model: the run's model (only its heads are kept, for ``predict`` and formatting).
    """

    def __init__(self, graph: OnnxGraph, model: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        exported = graph.metadata.get("heads", [])
        self.postprocess_heads = list(graph.metadata.get("postprocess_heads", []))
        self.heads = nn.ModuleDict({n: h for n, h in model.heads.items() if n in exported})
        if self.postprocess_heads:
            from edh.export.postprocess import Postprocessed

            for name in self.postprocess_heads:
                self.heads[name] = Postprocessed(self.heads[name])
        self.head_specs = {n: model.head_specs[n] for n in self.heads}
        self.decoder = None
        object.__setattr__(self, "_model", model)  # not a submodule: only its tasks are read

    def tasks(self) -> dict[str, nn.Module]:
        """As `Model.tasks`: the kept heads, or for a model without heads the run model's own tasks."""
        return dict(self.heads) if len(self.heads) else self._model.tasks()

    def remove_heads(self, keep: list[str]) -> "OnnxImageModel":
        unknown = [k for k in keep if k not in self.heads]
        if unknown:
            raise ExportError(f"{self.graph.path} has no head named {', '.join(unknown)}; it holds "
                              f"{', '.join(self.heads)} (export it again with --heads)")
        for name in list(self.heads):
            if name not in keep:
                del self.heads[name]
                del self.head_specs[name]
        return self

    def forward(self, images: torch.Tensor, **context: Any) -> dict[str, Any]:
        expected = tuple(self.graph.metadata["input_size"])
        if not self.graph.metadata.get("dynamic_size") and tuple(images.shape[-2:]) != expected:
            raise ExportError(f"{self.graph.path} was exported for {expected[0]}x{expected[1]} images, got "
                              f"{images.shape[-2]}x{images.shape[-1]}; export again with --input-size")
        if self.postprocess_heads:
            from edh.export.postprocess import run_with_postprocess

            outputs = run_with_postprocess(self.graph, images, dict(self.heads))
        else:
            outputs = self.graph(images)
        return {name: outputs[name] for name in self.tasks()}


def onnx_run(run: Run, path: str | Path | None = None) -> Run:
    """The same run with its model replaced by onnxruntime over the exported graph(s) (``edh predict
    --backend onnxruntime``); ``path`` defaults to ``RUNDIR/model.onnx``."""
    from edh.export.onnx import require_onnx
    from edh.ops.generation import generates

    require_onnx()
    path = Path(path) if path else Path(run.path) / ONNX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; export the run first: edh export {run.path} --format onnx")
    if generates(run.model):
        from edh.export.generation import OnnxSeq2Seq

        return Run(run.path, OnnxSeq2Seq.load(path, run.model), run.spec, run.info)
    graph = OnnxGraph(path)
    if graph.metadata.get("kind") != "image":
        raise ExportError(f"{path} is a {graph.metadata.get('kind')!r} graph, not an image model's")
    return Run(run.path, OnnxImageModel(graph, run.model), run.spec, run.info)
