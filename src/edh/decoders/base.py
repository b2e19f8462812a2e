"""The Decoder contract: encoder features in, features at the output's resolution / length out.

`StepDecoder` adds the contract of a decoder that generates one token at a time (Transformer,
LSTM): greedy and beam search (`edh.ops.generation`), the ONNX decoder-step export and its
onnxruntime runner (`edh.export.generation`) use only what it declares.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec, Sequence
from edh.layers.positional import sinusoidal_2d


class Decoder(nn.Module):
    """Restores resolution or generates structure from the encoder's features.

    A decoder is built from the encoder's ``out_spec`` (passed as ``in_spec``) and states its own
    ``out_spec``. ``forward(features, **context)`` receives the encoder's features plus whatever
    the task supplies (for example the target prefix of a seq2seq decoder).

    Attributes:
        accepts: the `FeatureSpec` kinds this decoder can be built on.
        produces: the kind of its ``out_spec``.
        can_sample: ``sample(count, generator)`` draws outputs from a prior (variational decoders).
        requires: what the decoder needs of its encoder beyond ``accepts``, in words (``edh list
            decoders`` shows it; the constructor refuses an encoder without it, saying why).
    """

    out_spec: FeatureSpec
    accepts: tuple[str, ...] = ("pyramid",)
    requires: str = ""
    produces: str = "pyramid"
    can_sample: bool = False

    def __init__(self, in_spec: FeatureSpec) -> None:
        super().__init__()
        self.in_spec = in_spec

    def forward(self, features: Any, **context: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def example_context(self, inputs: torch.Tensor) -> dict[str, Any]:
        """What ``describe`` passes to ``Model.forward`` beside an example input (a step decoder's
        target prefix). Default: nothing."""
        return {}

    def objective(self) -> tuple[str, dict[str, Any]] | None:
        """How this decoder's output is scored when the model has no heads (its output *is* the
        result, as an autoencoder's or a denoiser's): a registered head type and its options.
        Default: ``("reconstruction", {})``, MSE against the input; None: this decoder needs a head."""
        return "reconstruction", {}

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` outputs drawn from the decoder's prior (decoders with ``can_sample``)."""
        raise NotImplementedError(f"decoder {type(self).__name__} cannot sample from a prior")


class StepCache:
    """What a `StepDecoder` keeps between generation steps (a typed cache per decoder).

    Generation reads ``length`` and ``capacity`` and calls ``select`` after each beam-search step;
    everything else in a cache is the decoder's own business.

    Attributes:
        length: positions decoded so far.
        capacity: the most positions this cache can hold.
    """

    length: int = 0
    capacity: int = 0

    def select(self, rows: torch.Tensor) -> None:  # pragma: no cover - abstract
        """Reorder the cache so row ``i`` continues row ``rows[i]`` (beam search)."""
        raise NotImplementedError


ROWS = "rows"  # the name of the axis that beam search repeats (once per beam) and reorders


class PyramidMemory(nn.Module):
    """The adapter from an image encoder's pyramid to a step decoder's memory: one level's map
    ``(B, C, H, W)`` flattened row-major to a `Sequence` ``(B, H*W, C)``, plus 2-D sinusoidal
    positions (`edh.layers.positional.sinusoidal_2d`), with no padding (every cell is real).

    This is how an image captioner's or OCR model's decoder attends over the image (Xu et al. 2015,
    "Show, Attend and Tell"; DETR's 2-D positions). It holds no weights: the decoder's
    cross-attention projects the cells.
    """

    def __init__(self, level: int, channels: int) -> None:
        super().__init__()
        self.level, self.channels = level, channels

    def forward(self, pyramid: list[torch.Tensor]) -> Sequence:
        fmap = pyramid[self.level]  # (B, C, H, W)
        B, C, H, W = fmap.shape
        cells = fmap.flatten(2).transpose(1, 2)  # (B, H*W, C)
        return Sequence(cells + sinusoidal_2d(H, W, C, fmap.device, cells.dtype), None)


class StepDecoder(Decoder):
    """A decoder that also decodes one position per row at a time, from a typed cache.

    Eager generation (`edh.ops.generation`): ``init_cache(memory, max_new_tokens, beam_size)``,
    then ``step(tokens, cache)`` per position and ``cache.select(rows)`` for beam search. Keep
    these fast: they are the hot loop.

    ONNX export and its onnxruntime runner (`edh.export.generation`) use the same step through
    named tensors only (the ``export_*`` methods are traced, never called while generating eagerly):

    - ``export_memory(memory)``: what is computed once per source from the encoder's output, as
      named tensors (outputs of the encoder graph, inputs of every step);
    - ``export_initial_state(memory_tensors)``: the state before the first step, one row per memory
      row (traced into the encoder graph too, so it may use weights);
    - ``export_step(tokens, memory_tensors, state) -> (hidden, state)``: one traceable step; the
      new state has the same names as the old;
    - ``export_axes``: per memory and state tensor name, ``{axis: name}`` of its dynamic axes; each
      has exactly one axis named ``rows`` (`ROWS`), the one beam search repeats and reorders. Other
      axis names are the decoder's (``source``: the source length, shared with the encoder graph).

    Names of memory and state tensors must differ from each other and from ``source``, ``tokens``,
    ``features``, ``padding_mask`` and ``logits`` (the graphs' own inputs and outputs).

    Attributes:
        bos_id, eos_id, pad_id: special token ids (start of a target, end of a target, padding).
        max_length: the longest target the decoder can produce (its positions).
        hidden_size: width of ``step``'s output, the generating head's input.
        export_axes: the dynamic axes of the export tensors (see above).
    """

    accepts: tuple[str, ...] = ("sequence", "pyramid")
    produces: str = "sequence"
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0
    max_length: int = 1024
    hidden_size: int = 0
    export_axes: dict[str, dict[int, str]] = {}

    # ---- the memory: what the decoder attends over -------------------------------------------------
    def init_memory(self, in_spec: FeatureSpec, memory_level: int = -1) -> int:
        """Set up the memory adapter for ``in_spec``; returns the memory width the decoder attends over.

        A `Sequence` (text, audio) is the memory as it is. A pyramid (an image encoder: captioning,
        OCR) becomes one: level ``memory_level`` (default the deepest) flattened to ``H*W`` cells with
        2-D positions (`PyramidMemory`). A level that does not exist, or a width the positions cannot
        encode, is a `SpecError` at build time.
        """
        self.memory_adapter = None
        if in_spec.kind == "sequence":
            return in_spec.width
        if in_spec.kind != "pyramid":
            raise SpecError(f"decoder {type(self).__name__} attends over a sequence or an image pyramid, not a "
                            f"{in_spec.kind} ({in_spec.describe()})")
        levels = in_spec.num_levels
        if not -levels <= memory_level < levels:
            raise SpecError(f"decoder.memory_level is {memory_level}, but the encoder's pyramid has levels "
                            f"0..{levels - 1} ({in_spec.describe()}); pick one of them (-1: the deepest)")
        width = in_spec.channels[memory_level]
        if width % 4:
            raise SpecError(f"decoder.memory_level {memory_level} has {width} channels; its 2-D positions need a "
                            "multiple of 4: pick another level or an encoder with such a width")
        self.memory_adapter = PyramidMemory(memory_level % levels, width)
        return width

    def memory(self, features: Any) -> Sequence:
        """The encoder's output as the `Sequence` the decoder attends over (`init_memory`).
        `edh.ops.generation` and the export call it before `init_cache` / `export_memory`;
        ``forward`` calls it itself (a `Sequence` passes unchanged)."""
        if isinstance(features, Sequence):
            return features
        adapter = getattr(self, "memory_adapter", None)
        if adapter is None:
            raise ValueError(f"decoder {type(self).__name__} was built on a sequence but got {type(features).__name__}")
        return adapter(features)

    def example_context(self, inputs: torch.Tensor) -> dict[str, Any]:
        """What ``describe`` passes beside an example input: a target prefix of 5 tokens."""
        return {"decoder_input": torch.full((inputs.shape[0], 5), self.bos_id, dtype=torch.long,
                                            device=inputs.device)}

    # ---- eager generation ---------------------------------------------------------------------------
    def objective(self) -> None:
        """A generating decoder's output is scored by a head (``lm``): it has no objective of its own."""
        return None

    def init_cache(self, memory: Any, max_new_tokens: int, beam_size: int = 1) -> StepCache:  # pragma: no cover
        """A cache for ``max_new_tokens`` positions of every row (``beam_size`` rows per source, the
        beams of one source next to each other). Calls `check_length`."""
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, cache: StepCache) -> torch.Tensor:  # pragma: no cover - abstract
        """``tokens (N,)`` (each row's previous token) -> ``(N, hidden_size)``; advances ``cache``."""
        raise NotImplementedError

    def check_length(self, max_new_tokens: int) -> None:
        """A clear error when ``max_new_tokens`` is past ``max_length``."""
        if max_new_tokens > self.max_length:
            raise ValueError(f"cannot generate {max_new_tokens} tokens: the decoder's positions stop at "
                             f"{self.max_length} (max_len); ask for fewer tokens")

    # ---- export (traced) ----------------------------------------------------------------------------
    def export_memory(self, memory: Any) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """The encoder's output -> the named tensors every step reads (one row per source)."""
        raise NotImplementedError

    def export_initial_state(self, memory: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        """`export_memory`'s tensors -> the named state before the first step (one row per memory row)."""
        raise NotImplementedError

    def export_step(self, tokens: torch.Tensor, memory: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover - abstract
        """``tokens (N,)``, memory and state tensors -> ``(N, hidden_size)`` and the next state (same names)."""
        raise NotImplementedError

    def export_rows_axes(self) -> dict[str, int]:
        """Per export tensor name, the index of its ``rows`` axis (checks there is exactly one)."""
        out = {}
        for name, axes in self.export_axes.items():
            rows = [int(axis) for axis, label in axes.items() if label == ROWS]
            if len(rows) != 1:
                raise ValueError(f"decoder {type(self).__name__}: export tensor {name!r} must name exactly one axis "
                                 f"{ROWS!r} in export_axes, got {axes}")
            out[name] = rows[0]
        return out
