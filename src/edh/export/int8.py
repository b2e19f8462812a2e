"""Dynamic int8 quantization of exported graphs (``edh export --int8``, ``edh predict --int8``).

onnxruntime's ``quantize_dynamic`` turns the weights of every ``MatMul`` / ``Gemm`` into int8
(activations are quantized on the fly, per batch); convolutions stay fp32, so image models gain
only in their linear layers (a classification head), while a translator's decoder step and LM head
are mostly linears. The int8 graph is written atomically beside the fp32 one
(``model.onnx`` -> ``model.int8.onnx``; a translator's step graph ``model.int8.decoder_step.onnx``)
with ``"int8": true`` in its edh metadata.

int8 outputs do not match fp32 to float rounding, so the check is looser than fp32's check against
eager PyTorch: for image graphs the top-1 agreement of every 2-D ``(batch, classes)`` output on
sample images, for translators the greedy token agreement on sample sources, each against the fp32
graph and required to be at least ``MIN_AGREEMENT``; the max abs difference of every output is reported.

Example:
    >>> report = export_run("runs/digits")
    >>> quantize_export(run, report)   # writes runs/digits/model.int8.onnx
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from edh.export.onnx import METADATA_KEY, ExportCheckError, ExportReport, OnnxGraph, OutputCheck, compare, read_metadata

INT8_SUFFIX = ".int8.onnx"
QUANTIZED_OPS = ["MatMul", "Gemm"]  # convolutions stay fp32
MIN_AGREEMENT = 0.9  # top-1 (image graphs) or token (translators) agreement with the fp32 graph
SAMPLES = 16  # sample images / sources the int8 graph is checked on


def int8_path(path: str | Path) -> Path:
    """The int8 graph beside an fp32 one: ``model.onnx`` -> ``model.int8.onnx``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + INT8_SUFFIX)


def quantize_file(source: Path, target: Path, per_channel: bool = False, **metadata: Any) -> Path:
    """Write ``source`` with int8 MatMul / Gemm weights to ``target`` (atomically); its edh metadata is
    the source's plus ``int8: true``, ``int8_ops`` and ``metadata``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edh.utils.io import atomic_write

    data = {**read_metadata(source), "int8": True, "int8_ops": QUANTIZED_OPS, "int8_per_channel": per_channel,
            **metadata}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder) / target.name
        quantize_dynamic(str(source), str(scratch), op_types_to_quantize=QUANTIZED_OPS, per_channel=per_channel,
                         weight_type=QuantType.QInt8)
        proto = onnx.load(str(scratch))
    kept = [e for e in proto.metadata_props if e.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(data)
    atomic_write(target, lambda f: f.write(proto.SerializeToString()))
    return target


def top1_agreement(reference: torch.Tensor, value: torch.Tensor) -> float:
    """The fraction of rows of two ``(batch, classes)`` score tensors with the same arg-max."""
    return float((reference.argmax(-1) == value.argmax(-1)).double().mean())


def _require(agreement: float, what: str, path: Path) -> None:
    if agreement < MIN_AGREEMENT:
        raise ExportCheckError(f"{path}: {what} agreement with the fp32 graph is {agreement:.1%}, below "
                               f"{MIN_AGREEMENT:.0%}; int8 does not pay for this model: use the fp32 graph")


def quantize_image_export(run: Any, fp32: Path, per_channel: bool = False) -> ExportReport:
    """``model.onnx`` -> ``model.int8.onnx``, checked against the fp32 graph on sample images."""
    from edh.export.runs import sample_images

    target = quantize_file(fp32, int8_path(fp32), per_channel)
    reference, quantized = OnnxGraph(fp32), OnnxGraph(target)
    images = sample_images(run, SAMPLES, tuple(reference.metadata["input_size"]))
    expected = [torch.from_numpy(a) for a in reference.run_numpy(images)]
    got = quantized.run_numpy(images)
    checks = compare(expected, quantized.output_names, got)
    notes = [f"int8: {', '.join(QUANTIZED_OPS)} weights int8 (dynamic quantization"
             f"{', per channel' if per_channel else ''}), convolutions fp32"]
    for name, a, b in zip(quantized.output_names, expected, got):
        if a.ndim == 2 and a.is_floating_point() and a.shape[1] > 1:
            agreement = top1_agreement(a, torch.from_numpy(b))
            _require(agreement, f"{name} top-1", target)
            notes.append(f"int8 {name}: top-1 agreement with fp32 {agreement:.1%} on {len(images)} images "
                         f"(required >= {MIN_AGREEMENT:.0%})")
    return ExportReport([target], {target.name: [_vs_fp32(c) for c in checks]}, notes)


def quantize_seq2seq_export(run: Any, fp32: Path, per_channel: bool = False) -> ExportReport:
    """The translator's encoder and decoder-step graphs -> int8, checked by greedy token agreement."""
    from edh.export.generation import OnnxSeq2Seq, _sources, step_path
    from edh.ops.generation import generate

    target = int8_path(fp32)
    steps = quantize_file(step_path(fp32), step_path(target), per_channel)
    quantize_file(fp32, target, per_channel, step_file=steps.name)
    metadata = read_metadata(fp32)
    decoder = run.model.decoder
    sources = _sources(run.model, run.info.image_size, metadata["vocab_size"],
                       [3 + (i % 8) for i in range(SAMPLES)], decoder.pad_id, decoder.eos_id, 5)
    fp32_tokens = generate(OnnxSeq2Seq.load(fp32, run.model), sources, beam_size=1, max_new_tokens=12).tokens
    int8_tokens = generate(OnnxSeq2Seq.load(target, run.model), sources, beam_size=1, max_new_tokens=12).tokens
    agreement = token_agreement(fp32_tokens, int8_tokens)
    _require(agreement, "greedy token", target)
    notes = [f"int8: {', '.join(QUANTIZED_OPS)} weights of both graphs int8 (dynamic quantization)",
             f"int8 greedy decoding: token agreement with fp32 {agreement:.1%} on {len(sources)} sources "
             f"(required >= {MIN_AGREEMENT:.0%})"]
    return ExportReport([target, steps], {}, notes)


def token_agreement(reference: torch.Tensor, value: torch.Tensor) -> float:
    """The fraction of positions (of the longer of two ``(B, T)`` token tensors) with equal tokens."""
    length = max(reference.shape[1], value.shape[1])
    pad = -1

    def widen(tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(tokens, (0, length - tokens.shape[1]), value=pad)

    return float((widen(reference) == widen(value)).double().mean())


def _vs_fp32(check: OutputCheck) -> OutputCheck:
    return OutputCheck(f"{check.name} (vs fp32)", check.max_abs_diff, check.scale, check.shape)


def quantize_export(run: Any, report: ExportReport, per_channel: bool = False) -> ExportReport:
    """The int8 graph(s) of a finished fp32 export (``report.files[0]`` is the main graph)."""
    fp32 = report.files[0]
    if read_metadata(fp32).get("kind") == "seq2seq-encoder":
        return quantize_seq2seq_export(run, fp32, per_channel)
    return quantize_image_export(run, fp32, per_channel)


def int8_graph(run: Any, onnx: str | Path | None = None) -> Path:
    """The int8 graph for ``edh predict --int8``: ``int8_path`` of ``--onnx`` (default ``RUNDIR/model.onnx``),
    or ``--onnx`` itself when it already is an int8 graph; a clear error when it was not exported."""
    from edh.export.runs import ONNX_FILE

    base = Path(onnx) if onnx else Path(run.path) / ONNX_FILE
    path = base if base.name.endswith(INT8_SUFFIX) else int8_path(base)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; export the int8 graph first: edh export {run.path} --int8"
                                + (f" --out {base}" if onnx else ""))
    return path


def int8_lines(report: ExportReport) -> list[str]:
    """What ``edh export --int8`` prints: the files, each output's max abs diff to fp32, the notes."""
    out = []
    for path in report.files:
        out.append(f"wrote {path}")
        for check in report.checks.get(path.name, []):
            out.append(f"  {check.name:<32} {str(check.shape):<20} max abs diff {check.max_abs_diff:.3g}")
    return out + report.notes
