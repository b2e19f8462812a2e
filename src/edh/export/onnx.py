"""ONNX export of any module whose outputs are tensors nested in dicts / lists, checked with onnxruntime.

`export_graph` traces a module (PyTorch's TorchScript-based exporter, ``dynamo=False``: it
needs no ``onnxscript`` and follows edh's Python control flow by tracing), names every output
after its place in the output tree (`edh.export.flatten`), makes the batch axis dynamic on the
inputs and on every output that has one (more axes, such as an image's height and width, on
request), and writes the file atomically with the output layout in
the ONNX metadata (key ``edh``). `check_graph` runs the file with onnxruntime at another batch size
than the traced one and reports the max abs difference per output against eager PyTorch;
`OnnxGraph` loads a file and returns outputs in the module's own tree form, so each head's eager
``predict`` post-processes them unchanged.

The model families on top of this live in `edh.export.runs` (a run folder -> ONNX files).

Example:
    >>> info = export_graph(model, (images,), "model.onnx", input_names=["images"])
    >>> check_graph("model.onnx", model, (more_images,))  # raises ExportCheckError above tolerance
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edh.export.flatten import Layout, flatten, unflatten

log = logging.getLogger("edh")

DEFAULT_OPSET = 17
METADATA_KEY = "edh"
DEFAULT_TOLERANCE = 1e-4


TRACE_BATCH, CHECK_BATCH = 2, 3  # traced at one batch size, checked at another (the batch axis is dynamic)


class ExportError(ValueError):
    """A model or run that cannot be exported; the message says why and what to change."""


class ExportCheckError(ExportError):
    """An exported graph whose outputs differ from eager PyTorch by more than the tolerance."""


def require_onnx() -> None:
    """Raise a clear `ExportError` when ``onnx`` or ``onnxruntime`` is not installed."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}: pip install 'edh[export]' "
                          "(or pip install onnx onnxruntime)")


@dataclass
class OutputCheck:
    """One output compared between onnxruntime and eager PyTorch.

    Attributes:
        name: the output's name in the graph.
        max_abs_diff: largest absolute difference.
        scale: largest absolute eager value (the tolerance is relative to ``max(1, scale)``).
        shape: the output's shape at the checked batch size.
    """

    name: str
    max_abs_diff: float
    scale: float
    shape: tuple[int, ...]

    def ok(self, tolerance: float) -> bool:
        return self.max_abs_diff <= tolerance * max(1.0, self.scale)


@dataclass
class GraphInfo:
    """What `export_graph` wrote: the file, its inputs and outputs, and the output layout."""

    path: Path
    input_names: list[str]
    output_names: list[str]
    layout: Layout
    batch_outputs: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)


class FlatOutputs(nn.Module):
    """``module(*inputs)`` with its output tree flattened to a tuple of tensors (what ONNX returns).

    Args:
        module: the module to export (an edh `Model` or any ``nn.Module``).
        call: what to run instead of ``module.forward`` (e.g. a decoder step); gets ``*inputs``.
    """

    def __init__(self, module: nn.Module, call: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.module = module
        self.call = call

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tree = self.call(*inputs) if self.call is not None else self.module(*inputs)
        return tuple(flatten(tree)[1])


def _run_eager(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    with torch.inference_mode():
        return module(*inputs)


def _batch_outputs(first: list[torch.Tensor], second: list[torch.Tensor], batches: tuple[int, int]) -> list[bool]:
    """Which outputs have a batch axis: dim 0 follows the input batch between two eager runs."""
    return [a.ndim > 0 and b.ndim > 0 and a.shape[0] == batches[0] and b.shape[0] == batches[1]
            for a, b in zip(first, second)]


def export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path, input_names: list[str],
                 opset: int = DEFAULT_OPSET, probe: tuple[torch.Tensor, ...] | None = None,
                 dynamic_axes: dict[str, dict[int, str]] | None = None, metadata: dict[str, Any] | None = None,
                 call: Callable[..., Any] | None = None) -> GraphInfo:
    """Trace ``module`` with ``inputs`` into an ONNX file at ``path``.

    Args:
        module: in eval mode; its forward (or ``call``) returns tensors nested in dicts / lists.
        inputs: example inputs, batch first; the traced batch size should differ from 1.
        path: the ``.onnx`` file (written atomically).
        input_names: one name per input.
        opset: ONNX opset version.
        probe: the same inputs at another batch size; outputs whose dim 0 follows the batch get a
            dynamic batch axis. ``None``: no dynamic axes beyond ``dynamic_axes``.
        dynamic_axes: extra dynamic axes ``{name: {axis: label}}`` (inputs or outputs).
        metadata: JSON data stored beside the layout under the ONNX metadata key ``edh``.
        call: run this with ``*inputs`` instead of ``module.forward``.

    Returns:
        A `GraphInfo` (output names, which outputs are batched, the layout).
    """
    import onnx

    from edh.utils.io import atomic_write

    if len(input_names) != len(inputs):
        raise ExportError(f"{len(inputs)} example inputs but {len(input_names)} input names")
    module = module.eval()
    flat = FlatOutputs(module, call).eval()
    tree = _run_eager(call or module, inputs)
    names, tensors, layout = flatten(tree)
    names = _unique(names, set(input_names))
    axes: dict[str, dict[int, str]] = {}
    batched: list[str] = []
    if probe is not None:
        probe_tensors = flatten(_run_eager(call or module, probe))[1]
        if len(probe_tensors) != len(tensors):
            raise ExportError("the model returns a different number of outputs at another batch size; it cannot be "
                              "exported with a dynamic batch axis")
        for name, value in zip(input_names, inputs):
            axes[name] = {0: "batch"}
        batches = (inputs[0].shape[0], probe[0].shape[0])
        for name, has_batch in zip(names, _batch_outputs(tensors, probe_tensors, batches)):
            if has_batch:
                axes[name] = {0: "batch"}
                batched.append(name)
    for name, extra in (dynamic_axes or {}).items():
        axes.setdefault(name, {}).update(extra)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings for shape checks, the legacy exporter's notice
        torch.onnx.export(flat, tuple(inputs), buffer, input_names=list(input_names), output_names=names,
                          dynamic_axes=axes or None, opset_version=opset, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    data = {"layout": layout, "inputs": list(input_names), "outputs": names, "batch_outputs": batched,
            **(metadata or {})}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(data)
    onnx.checker.check_model(proto)
    path = Path(path)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return GraphInfo(path, list(input_names), names, layout, batched, dict(metadata or {}))


def _unique(names: list[str], taken: set[str]) -> list[str]:
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate)
        out.append(candidate)
    return out


def session(path: str | Path, threads: int | None = None, quiet: bool = False):
    """An onnxruntime ``InferenceSession`` on the CPU, with a clear error for a missing or broken file;
    ``quiet``: onnxruntime logs nothing below fatal (a run expected to fail may fail silently)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist; make it with `edh export RUNDIR --format onnx`")
    options = ort.SessionOptions()
    options.log_severity_level = 4 if quiet else 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot load {path}: {error}") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The edh metadata of an exported file (layout, inputs, outputs, and what the exporter added)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ExportError(f"{path} was not exported by edh (no '{METADATA_KEY}' metadata); export it with `edh export`")


class OnnxGraph:
    """An exported graph run by onnxruntime, returning outputs in the module's own tree form.

    Args:
        path: the ``.onnx`` file written by `export_graph`.
        threads: onnxruntime intra-op threads (default: its own choice).
        quiet: onnxruntime logs nothing below fatal errors (for runs that are allowed to fail).
    """

    def __init__(self, path: str | Path, threads: int | None = None, quiet: bool = False) -> None:
        self.path = Path(path)
        self.session = session(self.path, threads, quiet)
        self.metadata = read_metadata(self.path)
        self.input_names = list(self.metadata["inputs"])
        self.output_names = list(self.metadata["outputs"])
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}

    def run_numpy(self, *inputs: Any) -> list[Any]:
        """Raw outputs (numpy arrays, in output-name order) for ``inputs`` (tensors or arrays)."""
        if len(inputs) != len(self.input_names):
            raise ExportError(f"{self.path} takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                              f"got {len(inputs)}")
        feed = {}
        for name, value in zip(self.input_names, inputs):
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
            if self._input_types[name] == "tensor(float)" and array.dtype != "float32":
                array = array.astype("float32")
            feed[name] = array
        return self.session.run(self.output_names, feed)

    def __call__(self, *inputs: Any) -> Any:
        """Outputs rebuilt into the exported module's output tree, as torch tensors."""
        arrays = self.run_numpy(*inputs)
        return unflatten(self.metadata["layout"], [torch.from_numpy(a) for a in arrays])


def compare(eager: list[torch.Tensor], names: list[str], runtime: list[Any]) -> list[OutputCheck]:
    """Max abs difference per output between eager tensors and runtime arrays (shapes must agree)."""
    checks = []
    for name, reference, value in zip(names, eager, runtime):
        value = torch.as_tensor(value)
        if tuple(value.shape) != tuple(reference.shape):
            raise ExportCheckError(f"output {name}: onnxruntime gives shape {tuple(value.shape)}, eager PyTorch "
                                   f"{tuple(reference.shape)}")
        if reference.numel() == 0:
            checks.append(OutputCheck(name, 0.0, 0.0, tuple(reference.shape)))
            continue
        reference = reference.detach().double()
        value = value.double()
        finite = torch.isfinite(reference)
        if not torch.equal(finite, torch.isfinite(value)) or not torch.equal(reference[~finite], value[~finite]):
            raise ExportCheckError(f"output {name}: non-finite values differ between onnxruntime and eager PyTorch")
        diff = float((reference[finite] - value[finite]).abs().max()) if finite.any() else 0.0
        scale = float(reference[finite].abs().max()) if finite.any() else 0.0
        checks.append(OutputCheck(name, diff, scale, tuple(reference.shape)))
    return checks


def check_graph(graph: OnnxGraph | str | Path, module: nn.Module | Callable[..., Any],
                inputs: tuple[torch.Tensor, ...], tolerance: float = DEFAULT_TOLERANCE) -> list[OutputCheck]:
    """Run the exported graph and eager ``module`` on ``inputs``; raise `ExportCheckError` if any output
    differs by more than ``tolerance * max(1, max |eager value|)``.

    Returns:
        One `OutputCheck` per output.
    """
    graph = graph if isinstance(graph, OnnxGraph) else OnnxGraph(graph)
    names, tensors, _ = flatten(_run_eager(module, inputs))
    checks = compare(tensors, graph.output_names, graph.run_numpy(*inputs))
    if len(names) != len(graph.output_names):
        raise ExportCheckError(f"eager PyTorch gives {len(names)} outputs but {graph.path} has "
                               f"{len(graph.output_names)}")
    bad = [c for c in checks if not c.ok(tolerance)]
    if bad:
        raise ExportCheckError(
            f"{graph.path} does not match eager PyTorch: " + "; ".join(
                f"{c.name} max abs diff {c.max_abs_diff:.3g} (values up to {c.scale:.3g})" for c in bad)
            + f" > tolerance {tolerance:g} x max(1, |values|). Try another --opset, or export without BatchNorm "
            "folding (--no-fold-bn)."
        )
    return checks


@dataclass
class ExportReport:
    """Files written and, per file, each output's difference to eager PyTorch.

    Attributes:
        files: the ONNX files, main graph first.
        checks: file name -> one `OutputCheck` per output.
        notes: what else the exporter did or measured (folded BatchNorms, detection agreement...).
    """

    files: list[Path]
    checks: dict[str, list[OutputCheck]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for checks in self.checks.values() for c in checks), default=0.0)

    def lines(self) -> list[str]:
        out = []
        for path in self.files:
            checks = self.checks.get(path.name, [])
            out.append(f"wrote {path}")
            for check in checks:
                out.append(f"  {check.name:<32} {str(check.shape):<20} max abs diff vs eager {check.max_abs_diff:.3g}")
        out += self.notes
        out.append(f"max abs diff vs eager PyTorch (onnxruntime, batch {CHECK_BATCH}): {self.max_abs_diff:.3g}")
        return out
