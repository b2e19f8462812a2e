"""Recurrent decoders (``lstm``, ``gru``) with Luong attention over the encoder's memory, and a cached step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec, Sequence
from edh.core.registry import register_decoder
from edh.decoders.base import StepCache, StepDecoder
from edh.layers import packed
from edh.layers.rnn import LuongAttention, additive_padding, masked_mean, rnn_class, rnn_step
from edh.layers.transformer import token_embedding


@dataclass
class RecurrentCache(StepCache):
    """What one generation keeps between steps (the recurrent decoders' `StepCache`).

    Attributes:
        hidden: ``(L, N, H)`` each layer's hidden state.
        cell: ``(L, N, H)`` each layer's cell state (LSTM), or None (GRU).
        memory: ``(N, S, C)`` the encoder's features (the attention's values).
        keys: ``(N, S, H)`` the memory projected for the attention scores, computed once.
        mask: ``(N, 1, S)`` additive mask of the source padding, or None.
        capacity: the most steps this generation takes.
        length: steps taken.
    """

    hidden: torch.Tensor
    cell: torch.Tensor | None
    memory: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor | None
    capacity: int = 0
    length: int = 0

    def select(self, rows: torch.Tensor) -> None:
        """Row ``i`` continues row ``rows[i]``: the states move; memory and keys stay (rows only move
        between beams of one source)."""
        self.hidden = self.hidden.index_select(1, rows)
        if self.cell is not None:
            self.cell = self.cell.index_select(1, rows)


class RecurrentDecoder(StepDecoder):
    """An LSTM / GRU decoder with Luong global attention (Luong et al. 2015) over the encoder's memory.

    Each position: the RNN reads the previous token's embedding; its top state ``h_t`` scores every
    memory position (``general``: ``h_t^T W_a s``, or ``dot``), the softmax weights give the context
    ``c_t``, and the output is ``tanh(W_c [c_t; h_t])`` (width ``hidden_size``), which the ``lm``
    head turns into logits.

    Why Luong and not Bahdanau's additive attention: Luong's attention reads the state *after* the
    RNN step and feeds nothing back into it (no input feeding), so teacher forcing runs the RNN over
    the whole target prefix in one ``nn.LSTM`` call and attends for all positions with two batched
    matmuls, with no Python loop over time, and `step` computes the same values one position at a
    time. The memory's keys (``W_a s``) are computed once per source and kept in the cache; the step
    runs each RNN layer as one packed matmul of ``[x; h]`` (`edh.layers.rnn.rnn_step`), not as an
    ``nn.LSTM`` call on a one-position sequence, which costs ~10x more on the CPU.

    The start state comes from the memory, not from the encoder's final states (which a `Sequence`
    does not carry): ``h_0`` (and ``c_0``) ``= tanh(W_init mean(s))`` per layer, the mean over the
    real (unpadded) memory positions, as Bahdanau et al. start from a projection of the encoder.
    So the decoder fits any encoder that gives a sequence (``lstm``, ``transformer``, audio) or a
    pyramid (``memory_level``: image cells, `StepDecoder.init_memory`).

    Export tensors (`StepDecoder`): memory ``memory (rows, source, C)``, ``memory_keys (rows, source,
    H)``, ``memory_mask (rows, 1, source)`` (additive); state ``hidden (L, rows, H)`` and, for the
    LSTM, ``cell (L, rows, H)``.

    Args:
        vocab_size: tokens in the target vocabulary.
        embedding_dim: target token embedding width; None: ``hidden_size`` (so an ``lm`` head with
            ``tie_embeddings: true`` can reuse the embedding as its output weight).
        hidden_size: RNN state and output width.
        num_layers: stacked RNN layers.
        dropout: on the embeddings, between RNN layers and on the output.
        attention: ``general`` (``h^T W_a s``) or ``dot`` (``h^T s``; needs memory width == hidden_size).
        max_len: the longest target generated (an RNN has no position limit of its own).
        pad_id, bos_id, eos_id: special tokens (padding, start of a target, end of a target).
        share_embeddings: use the encoder's ``token_embedding`` (needs equal vocab_size and embedding_dim).
        memory_level: on an image encoder, the pyramid level attended over (-1: the deepest).

    Shapes:
        memory `Sequence` ``(B, S, C)`` (or a pyramid) + decoder_input ``(B, T)`` -> `Sequence`
        ``(B, T, hidden_size)`` with the target padding mask ``(B, T)``.
    """

    cell_type = "lstm"
    produces = "sequence"

    def __init__(self, in_spec: FeatureSpec, vocab_size: int, embedding_dim: int | None = None,
                 hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.0, attention: str = "general",
                 max_len: int = 1024, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 share_embeddings: bool = False, memory_level: int = -1) -> None:
        super().__init__(in_spec)
        memory_width = self.init_memory(in_spec, memory_level)
        for name, value in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= value < vocab_size:
                raise ValueError(f"decoder {name} {value} is outside the vocabulary (size {vocab_size})")
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.vocab_size, self.embedding_dim = vocab_size, embedding_dim or hidden_size
        self.num_layers, self.pad_id, self.bos_id, self.eos_id = num_layers, pad_id, bos_id, eos_id
        self.share_embeddings, self.max_len, self._hidden_size = share_embeddings, max_len, hidden_size
        self.states = 2 if self.cell_type == "lstm" else 1  # (h, c) or h
        self.embedding = None if share_embeddings else token_embedding(vocab_size, self.embedding_dim, pad_id)
        self.__dict__["_shared_embedding"] = None  # a reference to the encoder's, set by `bind` (not owned)
        self.dropout = nn.Dropout(dropout)
        self.rnn = rnn_class(self.cell_type)(self.embedding_dim, hidden_size, num_layers, batch_first=True,
                                             dropout=dropout if num_layers > 1 else 0.0)
        self.bridge = nn.Linear(memory_width, num_layers * self.states * hidden_size)  # mean(memory) -> h_0 (c_0)
        self.attention = LuongAttention(hidden_size, memory_width, attention)
        self.combine = nn.Linear(memory_width + hidden_size, hidden_size)  # [c_t; h_t] -> output
        self.out_spec = FeatureSpec("sequence", (hidden_size,))
        self.export_axes = {"memory": {0: "rows", 1: "source"}, "memory_keys": {0: "rows", 1: "source"},
                            "memory_mask": {0: "rows", 2: "source"}, "hidden": {1: "rows"}}
        if self.states == 2:
            self.export_axes["cell"] = {1: "rows"}

    # ---- wiring ---------------------------------------------------------------------------------
    def bind(self, encoder: nn.Module) -> None:
        """Called by `Model` once the encoder is built: with ``share_embeddings``, read its embedding."""
        if not self.share_embeddings:
            return
        shared = getattr(encoder, "token_embedding", None)
        expected = (self.vocab_size, self.embedding_dim)
        if not isinstance(shared, nn.Embedding) or tuple(shared.weight.shape) != expected:
            found = "none" if not isinstance(shared, nn.Embedding) else str(tuple(shared.weight.shape))
            raise SpecError(
                f"decoder {self.cell_type!r} has share_embeddings: true, so it reads the encoder's token embedding of "
                f"shape (vocab_size, embedding_dim) = {expected}; the encoder {type(encoder).__name__} has {found}. "
                "Give the encoder the same vocab_size and embedding width, or set decoder.share_embeddings: false"
            )
        self.__dict__["_shared_embedding"] = shared

    @property
    def max_length(self) -> int:
        """``max_len``: an RNN has no positions, this only bounds generation."""
        return self.max_len

    @property
    def hidden_size(self) -> int:
        """The width of `step`'s output (the attentional state)."""
        return self._hidden_size

    def target_embedding(self) -> nn.Embedding:
        """The target token embedding (the encoder's when shared)."""
        embedding = self.embedding if self.embedding is not None else self.__dict__["_shared_embedding"]
        if embedding is None:
            raise RuntimeError("this decoder shares the encoder's token embedding but was never bound to an encoder; "
                               "build it inside a model (edh.build) or set share_embeddings: false")
        return embedding

    @property
    def token_embedding(self) -> nn.Embedding:
        """The target token embedding, for an ``lm`` head that ties its output weight to it: only when
        the embedding is as wide as the decoder's output (``embedding_dim == hidden_size``)."""
        if self.embedding_dim != self.hidden_size:
            raise SpecError(
                f"an lm head with tie_embeddings: true reuses the decoder's token embedding (vocab_size, embedding_dim)"
                f" = ({self.vocab_size}, {self.embedding_dim}) as its output weight, but decoder {self.cell_type!r} "
                f"outputs hidden_size {self.hidden_size} features. Set decoder.embedding_dim to {self.hidden_size} "
                "(or leave it out), or set tie_embeddings: false on the head"
            )
        return self.target_embedding()

    # ---- pieces shared by forward, step and export ------------------------------------------------
    def initial_state(self, memory: torch.Tensor, padding: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """``(B, S, C)`` memory -> ``(h_0,)`` or ``(h_0, c_0)``, each ``(L, B, H)``: tanh of a projection of
        the mean over real positions."""
        B = memory.shape[0]
        start = torch.tanh(self.bridge(masked_mean(memory, padding)))  # (B, L * states * H)
        start = start.view(B, self.num_layers, self.states, self._hidden_size).permute(2, 1, 0, 3)
        return tuple(s.contiguous() for s in start.unbind(0))

    def _output(self, out: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Top RNN outputs ``(B, T, H)`` -> attentional outputs ``tanh(W_c [c_t; h_t])`` ``(B, T, H)``."""
        context = self.attention(out, keys, memory, mask)  # (B, T, C)
        return torch.tanh(packed.linear(torch.cat([context, out], dim=-1), self.combine.weight, self.combine.bias))

    # ---- training / scoring -------------------------------------------------------------------------
    def forward(self, features: Any, decoder_input: torch.Tensor | None = None, **context: Any) -> Sequence:
        """Decode every position of a target prefix at once (teacher forcing).

        Args:
            features: the encoder's `Sequence` ``(B, S, C)`` with its padding mask (or a pyramid).
            decoder_input: ``(B, T)`` token ids, ``bos`` first, right-padded with ``pad_id``.
        """
        if decoder_input is None:
            raise ValueError(f"the {self.cell_type} decoder needs the target prefix: pass decoder_input=(B, T) token "
                             "ids (bos + target[:-1]); translation batches carry it as {'decoder_input': ...}")
        memory, padding = self.memory(features)
        x = self.dropout(self.target_embedding()(decoder_input))  # (B, T, E)
        state = self.initial_state(memory, padding)
        out = self.rnn(x, state if self.states == 2 else state[0])[0]  # (B, T, H): one call over every position
        hidden = self._output(out, self.attention.keys(memory), memory, additive_padding(padding, memory.dtype))
        return Sequence(self.dropout(hidden), decoder_input == self.pad_id)

    # ---- generation ---------------------------------------------------------------------------------
    def init_cache(self, features: Sequence, max_new_tokens: int, beam_size: int = 1) -> RecurrentCache:
        """The start state, the memory and its attention keys (computed once), each row repeated
        ``beam_size`` times.

        Args:
            features: the encoder's `Sequence` ``(B, S, C)``.
            max_new_tokens: the most steps to take.
            beam_size: rows per source.
        """
        self.check_length(max_new_tokens)
        memory, padding = features
        if padding is not None and not bool(padding.any()):
            padding = None
        state = self.initial_state(memory, padding)
        keys = self.attention.keys(memory)
        mask = additive_padding(padding, memory.dtype)
        if beam_size > 1:
            memory, keys = memory.repeat_interleave(beam_size, 0), keys.repeat_interleave(beam_size, 0)
            mask = None if mask is None else mask.repeat_interleave(beam_size, 0)
            state = tuple(s.repeat_interleave(beam_size, 1) for s in state)
        return RecurrentCache(state[0], state[1] if self.states == 2 else None, memory, keys, mask, max_new_tokens)

    def step(self, tokens: torch.Tensor, cache: RecurrentCache) -> torch.Tensor:
        """Decode one new position per row.

        Args:
            tokens: ``(N,)`` the previous token of each row (``bos`` at the first step).
            cache: from `init_cache`; its states advance by one position.

        Returns:
            ``(N, hidden_size)`` the new position's features (the LM head turns them into logits).
        """
        if cache.length >= cache.capacity:
            raise ValueError(f"the decoder cache holds {cache.capacity} positions and is full; "
                             "init_cache with a larger max_new_tokens")
        x = F.embedding(tokens, self.target_embedding().weight)  # (N, E)
        out, cache.hidden, cache.cell = rnn_step(self.rnn, x, cache.hidden, cache.cell)  # (N, H)
        cache.length += 1
        return self._output(out[:, None], cache.keys, cache.memory, cache.mask)[:, 0]

    # ---- export (traced; see `StepDecoder`) ------------------------------------------------------
    def export_memory(self, features: Sequence) -> dict[str, torch.Tensor]:
        """``memory (B, S, C)``, ``memory_keys (B, S, H)`` and the additive ``memory_mask (B, 1, S)``
        (zeros where nothing is padded: the graph has no branch on the data)."""
        memory, padding = features
        if padding is None:
            padding = torch.zeros(memory.shape[:2], dtype=torch.bool, device=memory.device)
        return {"memory": memory, "memory_keys": self.attention.keys(memory),
                "memory_mask": additive_padding(padding, memory.dtype)}

    def export_initial_state(self, memory: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``hidden`` (and ``cell``) ``(L, N, H)`` from the memory's mean over its real positions."""
        padding = memory["memory_mask"][:, 0] != 0  # (N, S)
        state = self.initial_state(memory["memory"], padding)
        return dict(zip(("hidden", "cell"), state))

    def export_step(self, tokens: torch.Tensor, memory: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`step` over the state tensors -> ``(N, hidden_size)`` and the next ``hidden`` (``cell``)."""
        cache = RecurrentCache(state["hidden"], state.get("cell"), memory["memory"], memory["memory_keys"],
                               memory["memory_mask"], capacity=1)
        hidden = self.step(tokens, cache)
        out = {"hidden": cache.hidden}
        if cache.cell is not None:
            out["cell"] = cache.cell
        return hidden, out


@register_decoder("lstm")
class LSTMDecoder(RecurrentDecoder):
    __doc__ = RecurrentDecoder.__doc__
    cell_type = "lstm"


@register_decoder("gru")
class GRUDecoder(RecurrentDecoder):
    __doc__ = RecurrentDecoder.__doc__
    cell_type = "gru"
