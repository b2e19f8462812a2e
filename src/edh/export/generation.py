"""A generating model (encoder + `StepDecoder` + a head that ``generates``) as two ONNX graphs, and
generation (greedy / beam search) over them with onnxruntime.

Both graphs and the runner use only the `StepDecoder` contract (`edh.decoders.base`), so any
decoder that implements it exports here; the tensor names below are the decoder's own.

- encoder graph (``model.onnx``): ``source (B, S)`` token ids -> the encoder's ``features (B, S, C)``
  and ``padding_mask (B, S)``, the decoder's memory tensors (``decoder.export_memory``: what is
  computed once per source) and its state before the first step (``decoder.export_initial_state``).
- decoder-step graph (``model.decoder_step.onnx``): ``tokens (N,)``, the memory tensors, the state
  tensors -> next-token ``logits (N, V)`` and the next state, one output ``next.<name>`` per state
  tensor. It runs the decoder's ``export_step`` and the head's ``logits``.

Dynamic axes come from ``decoder.export_axes``; the axis named ``rows`` is the one the runner
repeats for beam search and reorders after each beam-search step (``batch`` in the encoder graph).
The graphs' metadata names the memory and state tensors and their ``rows`` axes, so the runner
needs nothing of the eager decoder.

`OnnxSeq2Seq` offers what `edh.ops.generation` reads from a model (``encoder``, a `StepDecoder`
with ``init_cache`` / ``step`` and a `StepCache` with ``select``, a head that ``generates``), so the
same greedy and beam search loops run over onnxruntime, and `edh.workflows.translate.Translator`
uses it as it uses the eager model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edh.decoders.base import ROWS, StepCache, StepDecoder
from edh.export.onnx import (ExportCheckError, ExportError, ExportReport, OnnxGraph, OutputCheck, check_graph,
                             export_graph)
from edh.ops.generation import generate, generation_head
from edh.version import __version__

STEP_SUFFIX = ".decoder_step.onnx"
NEXT = "next"  # the step graph's state outputs are named ``next.<state name>``
RESERVED = {"source", "tokens", "features", "padding_mask", "logits", NEXT}


class EncoderGraph(nn.Module):
    """``source (B, S)`` -> encoder features, the decoder's memory and initial state (see module doc)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder

    def forward(self, source: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.decoder.memory(self.encoder(source))  # a Sequence (an image's cells: `StepDecoder.memory`)
        padding = features.padding_mask
        if padding is None:
            padding = torch.zeros(features.features.shape[:2], dtype=torch.bool, device=features.features.device)
        memory = self.decoder.export_memory(features)
        return {"features": features.features, "padding_mask": padding, **memory,
                **self.decoder.export_initial_state(memory)}


class StepGraph(nn.Module):
    """One decoder step, then the head's logits: ``(tokens, *memory, *state) -> {logits, next: state}``."""

    def __init__(self, model: nn.Module, head: nn.Module, memory_names: list[str], state_names: list[str]) -> None:
        super().__init__()
        self.model = model  # owns every weight the step reads (a shared embedding lives in the encoder)
        self.decoder, self.head = model.decoder, head
        self.memory_names, self.state_names = list(memory_names), list(state_names)

    def forward(self, tokens: torch.Tensor, *tensors: torch.Tensor) -> dict[str, Any]:
        count = len(self.memory_names)
        memory = dict(zip(self.memory_names, tensors[:count]))
        state = dict(zip(self.state_names, tensors[count:]))
        hidden, state = self.decoder.export_step(tokens, memory, state)
        return {"logits": self.head.logits(hidden), NEXT: {name: state[name] for name in self.state_names}}


def step_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + STEP_SUFFIX)


def _sources(model: nn.Module, image_size: Any, vocab: int, lengths: list[int], pad: int, eos: int,
             seed: int) -> torch.Tensor:
    """Example encoder inputs, one per entry of ``lengths``: for a token encoder, random ids
    ``(B, max(lengths))``, ``eos`` last, right-padded (rows of other lengths, so the traced graphs take
    the padding-mask branch); for any other input (images...), random values of the encoder's
    example input (at the run's ``image_size`` when it has one)."""
    generator = torch.Generator().manual_seed(seed)
    example = model.encoder.example_input(tuple(image_size) if image_size else None, batch_size=len(lengths))
    if example.is_floating_point():  # images, audio: values
        return torch.rand(example.shape, generator=generator).to(example.dtype)
    special = max(pad, eos) + 2
    rows = torch.full((len(lengths), max(lengths)), pad, dtype=torch.long)
    for row, length in enumerate(lengths):
        rows[row, :length - 1] = torch.randint(special, vocab, (length - 1,), generator=generator)
        rows[row, length - 1] = eos
    return rows


def _names(model: nn.Module, source: torch.Tensor) -> tuple[list[str], list[str]]:
    """The decoder's memory and state tensor names, checked against the contract (names free, axes declared)."""
    decoder = model.decoder
    with torch.inference_mode():
        memory = decoder.export_memory(decoder.memory(model.encoder(source)))
        state = decoder.export_initial_state(memory)
    clash = (set(memory) & set(state)) | ((set(memory) | set(state)) & RESERVED)
    if clash:
        raise ExportError(f"decoder {type(decoder).__name__}: export tensor names {sorted(clash)} clash (memory and "
                          f"state names must differ from each other and from {sorted(RESERVED)})")
    undeclared = [name for name in [*memory, *state] if name not in decoder.export_axes]
    if undeclared:
        raise ExportError(f"decoder {type(decoder).__name__}: export_axes declares no axes for {undeclared}; each "
                          f"memory and state tensor needs its {ROWS!r} axis")
    return list(memory), list(state)


def _step_inputs(decoder: StepDecoder, encoded: dict[str, torch.Tensor], memory_names: list[str],
                 state_names: list[str], past: int, seed: int, vocab: int) -> tuple[torch.Tensor, ...]:
    """Step-graph inputs after ``past`` eager steps over random tokens (a state as generation reaches it)."""
    generator = torch.Generator().manual_seed(seed)
    memory = {name: encoded[name] for name in memory_names}
    state = {name: encoded[name] for name in state_names}
    rows = encoded["features"].shape[0]
    with torch.inference_mode():
        for _ in range(past):
            _, state = decoder.export_step(torch.randint(0, vocab, (rows,), generator=generator), memory, state)
    tokens = torch.randint(0, vocab, (rows,), generator=generator)
    return (tokens, *[memory[n] for n in memory_names], *[state[n] for n in state_names])


def _axes(decoder: StepDecoder, names: list[str], rename: dict[str, str],
          prefix: str = "") -> dict[str, dict[int, str]]:
    """``export_axes`` of ``names`` (as ``prefix + name``), axis labels renamed by ``rename``."""
    return {prefix + name: {int(axis): rename.get(label, label) for axis, label in decoder.export_axes[name].items()}
            for name in names}


def export_seq2seq(run: Any, out: Path, heads: list[str] | None, opset: int, tolerance: float,
                   check_sentences: int = 4, beam_size: int = 3):
    """Write the encoder graph to ``out`` and the decoder-step graph beside it; check both graphs
    output by output, then greedy and beam-search generation token by token, against eager PyTorch."""

    model = copy.deepcopy(run.model).eval()
    name, head = generation_head(model)
    if heads and list(heads) != [name]:
        raise ExportError(f"a translator is exported with its generation head {name!r}; got --heads {' '.join(heads)}")
    decoder = model.decoder
    vocab = head.logits(torch.zeros(1, decoder.hidden_size)).shape[-1]
    pad, eos = decoder.pad_id, decoder.eos_id
    size = run.info.image_size
    example, probe = _sources(model, size, vocab, [7, 4], pad, eos, 0), _sources(model, size, vocab, [5, 9, 3], pad, eos, 1)
    memory_names, state_names = _names(model, example)
    encoder_graph = EncoderGraph(model).eval()
    with torch.inference_mode():
        encoded = encoder_graph(example)
    rows_axes = decoder.export_rows_axes()
    step_graph = StepGraph(model, head, memory_names, state_names).eval()
    steps = step_path(out)
    common = {"edh_version": __version__, "head": name, "bos_id": decoder.bos_id, "eos_id": eos, "pad_id": pad,
              "max_len": decoder.max_length, "vocab_size": int(vocab), "memory": memory_names, "state": state_names,
              "rows_axes": {n: rows_axes[n] for n in memory_names + state_names}}
    batch = {ROWS: "batch"}  # one row per source in the encoder graph
    export_graph(encoder_graph, (example,), out, ["source"], opset,
                 dynamic_axes={"source": dict(model.encoder.input_axes), "features": {0: "batch", 1: "source"},
                               "padding_mask": {0: "batch", 1: "source"},
                               **_axes(decoder, memory_names + state_names, batch)},
                 metadata={**common, "kind": "seq2seq-encoder", "step_file": steps.name})
    grown = {label: f"{NEXT}_{label}" for axes in decoder.export_axes.values() for label in axes.values()
             if label != ROWS}  # a state axis may change size from one step to the next
    export_graph(step_graph, _step_inputs(decoder, encoded, memory_names, state_names, 2, 0, vocab), steps,
                 ["tokens", *memory_names, *state_names], opset,
                 dynamic_axes={"tokens": {0: ROWS}, **_axes(decoder, memory_names + state_names, {}),
                               "logits": {0: ROWS}, **_axes(decoder, state_names, grown, f"{NEXT}.")},
                 metadata={**common, "kind": "seq2seq-step"})
    reference_encoder = EncoderGraph(run.model).eval()
    checks = {out.name: check_graph(out, reference_encoder, (probe,), tolerance)}
    with torch.inference_mode():
        encoded_probe = reference_encoder(probe)
    reference_step = StepGraph(run.model, generation_head(run.model)[1], memory_names, state_names).eval()
    checks[steps.name] = []
    for past in (0, 5):  # the first step (initial state) and a later one
        inputs = _step_inputs(run.model.decoder, encoded_probe, memory_names, state_names, past, past + 1, vocab)
        step_checks = check_graph(steps, reference_step, inputs, tolerance)
        checks[steps.name] += [OutputCheck(f"{c.name} (past {past})", c.max_abs_diff, c.scale, c.shape)
                               for c in step_checks]
    runtime = OnnxSeq2Seq.load(out, run.model)
    notes = []
    sources = _sources(model, size, vocab, [3 + 2 * i for i in range(check_sentences)], pad, eos, 2)
    for beams in (1, beam_size):
        eager = generate(run.model, sources, beam_size=beams, max_new_tokens=12)
        exported = generate(runtime, sources, beam_size=beams, max_new_tokens=12)
        if not torch.equal(eager.tokens, exported.tokens):
            raise ExportCheckError(f"{'greedy' if beams == 1 else f'beam-{beams}'} generation over onnxruntime "
                                   f"gives other tokens than eager PyTorch:\n{eager.tokens}\nvs\n{exported.tokens}")
        notes.append(f"{'greedy' if beams == 1 else f'beam search (beam {beams})'} over the exported step: tokens "
                     f"equal to eager on {len(sources)} sources ({eager.tokens.shape[1]} steps)")
    return ExportReport([out, steps], checks, notes)




@dataclass
class EncodedSource:
    """The encoder graph's outputs; ``features`` gives the generation loop its rows and device."""

    features: torch.Tensor
    padding_mask: torch.Tensor
    memory: dict[str, np.ndarray]
    state: dict[str, np.ndarray]


class OnnxCache(StepCache):
    """The step graph's memory and state between steps: numpy arrays; ``select`` reorders the state
    along each tensor's ``rows`` axis (beam search)."""

    def __init__(self, memory: dict[str, np.ndarray], state: dict[str, np.ndarray], rows_axes: dict[str, int],
                 capacity: int) -> None:
        self.memory, self.state, self.rows_axes = memory, state, rows_axes
        self.capacity, self.length = capacity, 0

    def select(self, rows: torch.Tensor) -> None:
        index = rows.cpu().numpy()
        self.state = {name: np.take(value, index, axis=self.rows_axes[name]) for name, value in self.state.items()}


class OnnxEncoder:
    def __init__(self, graph: OnnxGraph, memory_names: list[str], state_names: list[str]) -> None:
        self.graph = graph
        self.memory_names, self.state_names = memory_names, state_names

    def __call__(self, source: torch.Tensor) -> EncodedSource:
        source = source if source.is_floating_point() else source.long()
        arrays = dict(zip(self.graph.output_names, self.graph.run_numpy(source)))
        return EncodedSource(torch.from_numpy(arrays["features"]), torch.from_numpy(arrays["padding_mask"]),
                             {n: arrays[n] for n in self.memory_names}, {n: arrays[n] for n in self.state_names})


class OnnxDecoder(StepDecoder):
    """A `StepDecoder` over the decoder-step graph: ``init_cache`` / ``step`` as the generation loops
    call them (its ``step`` returns the logits: the head is in the graph).

    Args:
        graph: the decoder-step graph.
        metadata: the encoder graph's metadata (special tokens, ``max_len``, tensor names, rows axes).
        in_spec: the eager decoder's input spec.
    """

    def __init__(self, graph: OnnxGraph, metadata: dict[str, Any], in_spec: Any) -> None:
        super().__init__(in_spec)
        self.graph = graph
        self.bos_id, self.eos_id, self.pad_id = metadata["bos_id"], metadata["eos_id"], metadata["pad_id"]
        self.max_length = int(metadata["max_len"])
        self.hidden_size = int(metadata["vocab_size"])
        self.memory_names, self.state_names = list(metadata["memory"]), list(metadata["state"])
        self.rows_axes = {name: int(axis) for name, axis in metadata["rows_axes"].items()}
        expected = ["tokens", *self.memory_names, *self.state_names]
        if graph.input_names != expected:
            raise ExportError(f"{graph.path} takes {graph.input_names}, the encoder graph's metadata says {expected}; "
                              "export the run again with `edh export`")
        index = {name: position for position, name in enumerate(graph.output_names)}
        self.logits_output = index["logits"]
        self.state_outputs = [index[f"{NEXT}.{name}"] for name in self.state_names]

    def memory(self, features: EncodedSource) -> EncodedSource:
        """The encoder graph's outputs are the memory already (its adapter is in the graph)."""
        return features

    def init_cache(self, memory: EncodedSource, max_new_tokens: int, beam_size: int = 1) -> OnnxCache:
        self.check_length(max_new_tokens)

        def repeat(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if beam_size == 1:
                return dict(tensors)
            return {n: np.repeat(v, beam_size, axis=self.rows_axes[n]) for n, v in tensors.items()}

        return OnnxCache(repeat({n: memory.memory[n] for n in self.memory_names}),
                         repeat({n: memory.state[n] for n in self.state_names}), self.rows_axes, max_new_tokens)

    def step(self, tokens: torch.Tensor, cache: OnnxCache) -> torch.Tensor:
        if cache.length >= cache.capacity:
            raise ValueError(f"the decoder cache holds {cache.capacity} positions and is full")
        # the graph's inputs: tokens, then the memory and the state in the metadata's order (checked above)
        outputs = self.graph.run_numpy(tokens.long(), *cache.memory.values(), *cache.state.values())
        cache.state = {name: outputs[index] for name, index in zip(self.state_names, self.state_outputs)}
        cache.length += 1
        return torch.from_numpy(outputs[self.logits_output])


class _GraphLogits:
    """The generation head as the runner offers it: its defaults; its logits already come out of the step graph."""

    generates = True

    def __init__(self, head: nn.Module) -> None:
        self.defaults = head.generation_defaults()

    def generation_defaults(self) -> dict[str, Any]:
        return dict(self.defaults)

    @staticmethod
    def logits(hidden: torch.Tensor) -> torch.Tensor:
        return hidden


class OnnxSeq2Seq(nn.Module):
    """A generating model run by onnxruntime, shaped like the `Model` `edh.ops.generation.generate` reads.

    Args:
        encoder_graph, step_graph: the two exported graphs.
        model: the run's eager model (only its generation head's defaults and spec and its decoder's
            ``in_spec`` are read).
    """

    def __init__(self, encoder_graph: OnnxGraph, step_graph: OnnxGraph, model: nn.Module) -> None:
        super().__init__()
        metadata = encoder_graph.metadata
        name, head = generation_head(model)
        if metadata.get("head") != name:
            raise ExportError(f"{encoder_graph.path} was exported with head {metadata.get('head')!r}, the run has "
                              f"{name!r}")
        self.encoder = OnnxEncoder(encoder_graph, list(metadata["memory"]), list(metadata["state"]))
        self.decoder = OnnxDecoder(step_graph, metadata, model.decoder.in_spec)
        self.heads = {name: _GraphLogits(head)}
        self.head_specs = {name: model.head_specs[name]}
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)  # onnxruntime runs on the CPU

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> "OnnxSeq2Seq":
        encoder_graph = OnnxGraph(path)
        metadata = encoder_graph.metadata
        if metadata.get("kind") != "seq2seq-encoder":
            raise ExportError(f"{path} is not a translator's encoder graph (kind {metadata.get('kind')!r}); "
                              "export the run again with `edh export`")
        if "state" not in metadata:
            raise ExportError(f"{path} was exported by an older edh ({metadata.get('edh_version')}) whose graphs "
                              "name no decoder state; export the run again with `edh export`")
        steps = Path(path).with_name(metadata["step_file"])
        return cls(encoder_graph, OnnxGraph(steps), model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise ExportError("an exported translator only generates (edh predict / edh translate); it has no "
                          "teacher-forced forward")
