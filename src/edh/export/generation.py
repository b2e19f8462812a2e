"""A translator as two ONNX graphs, and generation (greedy / beam search) over them with onnxruntime.

- encoder graph: ``source (B, S)`` token ids -> the encoder's ``features (B, S, C)`` and
  ``padding_mask (B, S)``, the cross-attention keys / values of every decoder layer
  ``memory_kv (L, 2, B, H, S, Dh)`` and the additive ``memory_mask (B, 1, 1, S)``: what the
  decoder's ``init_cache`` computes once per source.
- decoder-step graph: ``tokens (N,)``, ``past_kv (t, N, L, 2, H, Dh)`` (the self-attention cache
  of the ``t`` positions decoded so far), ``memory_kv``, ``memory_mask`` -> next-token ``logits
  (N, V)`` and ``present_kv (t + 1, N, L, 2, H, Dh)``. It runs the decoder's own ``step`` and the
  ``lm`` head's ``logits``, so it is the eager step, traced.

`OnnxSeq2Seq` offers what `edh.ops.generation` reads from a model (``encoder``, a ``decoder``
with ``init_cache`` / ``step`` and a cache with ``select``, a head with ``logits``), so the same
greedy and beam search loops run over onnxruntime, and `edh.workflows.translate.Translator` uses it as it
uses the eager model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from edh.export.onnx import ExportCheckError, ExportError, OnnxGraph, OutputCheck, check_graph, export_graph
from edh.ops.generation import generate, generation_head
from edh.version import __version__

STEP_SUFFIX = ".decoder_step.onnx"


class EncoderGraph(nn.Module):
    """``source (B, S)`` -> encoder features and the decoder's cross-attention cache (see module doc)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder

    def forward(self, source: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(source)
        cache = self.decoder.init_cache(features, 1)
        padding = features.padding_mask if features.padding_mask is not None else source.new_zeros(source.shape).bool()
        mask = cache.memory_mask
        if mask is None:  # no padding anywhere: attend everywhere
            mask = torch.zeros(source.shape[0], 1, 1, source.shape[1], dtype=cache.memory_kv.dtype)
        return {"features": features.features, "padding_mask": padding, "memory_kv": cache.memory_kv,
                "memory_mask": mask}


class StepGraph(nn.Module):
    """One decoder step over a growing self-attention cache, then the head's logits (see module doc)."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model = model  # owns every weight the step reads (a shared embedding lives in the encoder)
        self.decoder, self.head = model.decoder, head

    def forward(self, tokens: torch.Tensor, past_kv: torch.Tensor, memory_kv: torch.Tensor,
                memory_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        # (1, N, L, 2, H, Dh): the new position's slot, shaped from memory_kv (past_kv may hold no position)
        empty = torch.zeros_like(memory_kv[:, :, :, :, :1]).permute(4, 2, 0, 1, 3, 5)
        grown = torch.cat([past_kv, empty], dim=0)
        # one tensor per layer, not views of one: the exporter keeps in-place writes to a view local to
        # that view, so the step's writes must land in tensors the graph returns
        cache = _StepCache([grown[:, :, index].clone() for index in range(grown.shape[2])], memory_kv, memory_mask,
                           past_kv.shape[0])
        hidden = self.decoder.step(tokens, cache)  # (N, D); writes position t of every layer's cache
        return {"logits": self.head.logits(hidden), "present_kv": torch.stack(cache.layers, dim=2)}


@dataclass
class _StepCache:
    """What `TransformerDecoder.step` reads from a `DecoderCache`, with one tensor per layer
    ``(t + 1, N, 2, H, Dh)``: the traced step writes position ``length`` of each."""

    layers: list[torch.Tensor]
    memory_kv: torch.Tensor
    memory_mask: torch.Tensor
    length: int

    @property
    def capacity(self) -> int:
        return self.length + 1

    def layer(self, index: int) -> torch.Tensor:
        return self.layers[index]


def step_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + STEP_SUFFIX)


def _sources(vocab: int, lengths: list[int], pad: int, eos: int, seed: int) -> torch.Tensor:
    """Random source token ids ``(B, max(lengths))``, ``eos`` last, right-padded: rows of other lengths,
    so the traced graphs take the padding-mask branch."""
    generator = torch.Generator().manual_seed(seed)
    special = max(pad, eos) + 2
    rows = torch.full((len(lengths), max(lengths)), pad, dtype=torch.long)
    for row, length in enumerate(lengths):
        rows[row, :length - 1] = torch.randint(special, vocab, (length - 1,), generator=generator)
        rows[row, length - 1] = eos
    return rows


def _step_inputs(encoded: dict[str, torch.Tensor], past: int, seed: int, vocab: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    memory_kv = encoded["memory_kv"]
    L, _, N, H, _, Dh = memory_kv.shape
    tokens = torch.randint(0, vocab, (N,), generator=generator)
    past_kv = torch.randn(past, N, L, 2, H, Dh, generator=generator)
    return tokens, past_kv, memory_kv, encoded["memory_mask"]


def export_translator(run: Any, out: Path, heads: list[str] | None, opset: int, tolerance: float,
                      check_sentences: int = 4, beam_size: int = 3):
    """Write the encoder graph to ``out`` and the decoder-step graph beside it; check both graphs
    output by output, then greedy and beam-search generation token by token, against eager PyTorch."""
    from edh.export.runs import ExportReport

    model = copy.deepcopy(run.model).eval()
    name, head = generation_head(model)
    if heads and list(heads) != [name]:
        raise ExportError(f"a translator is exported with its generation head {name!r}; got --heads {' '.join(heads)}")
    decoder = model.decoder
    vocab = head.logits(torch.zeros(1, decoder.d_model)).shape[-1]
    pad, eos = decoder.pad_id, decoder.eos_id
    example, probe = _sources(vocab, [7, 4], pad, eos, 0), _sources(vocab, [5, 9, 3], pad, eos, 1)
    encoder_graph, step_graph = EncoderGraph(model).eval(), StepGraph(model, head).eval()
    steps = step_path(out)
    common = {"edh_version": __version__, "head": name, "bos_id": decoder.bos_id, "eos_id": eos, "pad_id": pad,
              "max_len": decoder.positions.max_len, "vocab_size": int(vocab)}
    export_graph(encoder_graph, (example,), out, ["source"], opset,
                 dynamic_axes={"source": {0: "batch", 1: "source"}, "features": {0: "batch", 1: "source"},
                               "padding_mask": {0: "batch", 1: "source"}, "memory_kv": {2: "batch", 4: "source"},
                               "memory_mask": {0: "batch", 3: "source"}},
                 metadata={**common, "kind": "seq2seq-encoder", "step_file": steps.name})
    with torch.inference_mode():
        encoded = encoder_graph(example)
    export_graph(step_graph, _step_inputs(encoded, 2, 0, vocab), steps,
                 ["tokens", "past_kv", "memory_kv", "memory_mask"], opset,
                 dynamic_axes={"tokens": {0: "rows"}, "past_kv": {0: "past", 1: "rows"},
                               "memory_kv": {2: "rows", 4: "source"}, "memory_mask": {0: "rows", 3: "source"},
                               "logits": {0: "rows"}, "present_kv": {0: "present", 1: "rows"}},
                 metadata={**common, "kind": "seq2seq-step"})
    checks = {out.name: check_graph(out, EncoderGraph(run.model).eval(), (probe,), tolerance)}
    with torch.inference_mode():
        encoded_probe = EncoderGraph(run.model).eval()(probe)
    reference_step = StepGraph(run.model, generation_head(run.model)[1]).eval()
    checks[steps.name] = []
    for past in (0, 5):  # the first step (empty cache) and a later one
        step_checks = check_graph(steps, reference_step, _step_inputs(encoded_probe, past, past + 1, vocab), tolerance)
        checks[steps.name] += [OutputCheck(f"{c.name} (past {past})", c.max_abs_diff, c.scale, c.shape)
                               for c in step_checks]
    runtime = OnnxSeq2Seq.load(out, run.model)
    notes = []
    sources = _sources(vocab, [3 + 2 * i for i in range(check_sentences)], pad, eos, 2)
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
    memory_kv: np.ndarray
    memory_mask: np.ndarray


class OnnxCache:
    """The step graph's caches between steps: numpy arrays, reordered by ``select`` (beam search)."""

    def __init__(self, self_kv: np.ndarray, memory_kv: np.ndarray, memory_mask: np.ndarray, capacity: int) -> None:
        self.self_kv, self.memory_kv, self.memory_mask = self_kv, memory_kv, memory_mask
        self.capacity = capacity

    @property
    def length(self) -> int:
        return self.self_kv.shape[0]

    def select(self, rows: torch.Tensor) -> None:
        self.self_kv = np.ascontiguousarray(self.self_kv[:, rows.cpu().numpy()])


class OnnxEncoder:
    def __init__(self, graph: OnnxGraph) -> None:
        self.graph = graph

    def __call__(self, source: torch.Tensor) -> EncodedSource:
        features, padding, memory_kv, memory_mask = self.graph.run_numpy(source.long())
        return EncodedSource(torch.from_numpy(features), torch.from_numpy(padding), memory_kv, memory_mask)


class OnnxDecoder:
    """``init_cache`` / ``step`` over the decoder-step graph, as the generation loops call them."""

    def __init__(self, graph: OnnxGraph, metadata: dict[str, Any]) -> None:
        self.graph = graph
        self.bos_id, self.eos_id, self.pad_id = metadata["bos_id"], metadata["eos_id"], metadata["pad_id"]
        self.positions = SimpleNamespace(max_len=int(metadata["max_len"]))

    def init_cache(self, memory: EncodedSource, max_new_tokens: int, beam_size: int = 1) -> OnnxCache:
        if max_new_tokens > self.positions.max_len:
            raise ValueError(f"cannot generate {max_new_tokens} tokens: the decoder's positions stop at "
                             f"{self.positions.max_len} (max_len); ask for fewer tokens")
        memory_kv, mask = memory.memory_kv, memory.memory_mask
        if beam_size > 1:
            memory_kv, mask = np.repeat(memory_kv, beam_size, axis=2), np.repeat(mask, beam_size, axis=0)
        L, two, N, H, _, Dh = memory_kv.shape
        return OnnxCache(np.zeros((0, N, L, two, H, Dh), dtype=memory_kv.dtype), memory_kv, mask, max_new_tokens)

    def step(self, tokens: torch.Tensor, cache: OnnxCache) -> torch.Tensor:
        if cache.length >= cache.capacity:
            raise ValueError(f"the decoder cache holds {cache.capacity} positions and is full")
        logits, cache.self_kv = self.graph.run_numpy(tokens.long(), cache.self_kv, cache.memory_kv, cache.memory_mask)
        return torch.from_numpy(logits)


class _Logits:
    """The generation head's settings; its logits already come out of the step graph."""

    def __init__(self, head: nn.Module) -> None:
        self.beam_size = getattr(head, "beam_size", 1)
        self.length_penalty = getattr(head, "length_penalty", 1.0)
        self.max_new_tokens = getattr(head, "max_new_tokens", None)

    @staticmethod
    def logits(hidden: torch.Tensor) -> torch.Tensor:
        return hidden


class OnnxSeq2Seq(nn.Module):
    """A translator run by onnxruntime, shaped like the `Model` `edh.ops.generation.generate` reads.

    Args:
        encoder_graph, step_graph: the two exported graphs.
        model: the run's eager model (only its generation head's settings and spec are read).
    """

    def __init__(self, encoder_graph: OnnxGraph, step_graph: OnnxGraph, model: nn.Module) -> None:
        super().__init__()
        metadata = encoder_graph.metadata
        name, head = generation_head(model)
        if metadata.get("head") != name:
            raise ExportError(f"{encoder_graph.path} was exported with head {metadata.get('head')!r}, the run has "
                              f"{name!r}")
        self.encoder = OnnxEncoder(encoder_graph)
        self.decoder = OnnxDecoder(step_graph, metadata)
        self.heads = {name: _Logits(head)}
        self.head_specs = {name: model.head_specs[name]}
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)  # onnxruntime runs on the CPU

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> "OnnxSeq2Seq":
        encoder_graph = OnnxGraph(path)
        if encoder_graph.metadata.get("kind") != "seq2seq-encoder":
            kind = encoder_graph.metadata.get("kind")
            raise ExportError(f"{path} is not a translator's encoder graph (kind {kind!r}); "
                              "export the run again with `edh export`")
        steps = Path(path).with_name(encoder_graph.metadata["step_file"])
        return cls(encoder_graph, OnnxGraph(steps), model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise ExportError("an exported translator only generates (edh predict / edh translate); it has no "
                          "teacher-forced forward")
