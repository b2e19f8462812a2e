"""The Transformer decoder: causal self-attention + cross-attention, with an incremental KV-cached step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.decoders.base import StepCache, StepDecoder
from edh.core.features import FeatureSpec, Sequence
from edh.layers.attention import additive_mask, key_padding_mask
from edh.layers.positional import make_positions
from edh.layers.transformer import DecoderLayer, init_transformer_weights, resolve_preset, token_embedding
from edh.core.registry import register_decoder
from edh.core.errors import SpecError


@dataclass
class DecoderCache(StepCache):
    """What one generation keeps between steps (the transformer's `StepCache`).

    Attributes:
        self_kv: ``(T_max, N, L, 2, H, Dh)`` self-attention keys / values, preallocated and written
            in place one position per step.
        memory_kv: ``(L, 2, B, H, S, Dh)`` cross-attention keys / values, computed once per source
            (``B`` sources; their ``N / B`` beams are consecutive rows).
        memory_mask: ``(B, 1, 1, S)`` additive mask of the source padding, or None.
        length: positions written so far.
    """

    self_kv: torch.Tensor
    memory_kv: torch.Tensor
    memory_mask: torch.Tensor | None
    length: int = 0
    writers: torch.Tensor | None = None  # (T_max, N): which row wrote what each slot holds (see `select`)
    moved_slots: int = 0  # (position, row) slots `select` has copied so far

    @property
    def capacity(self) -> int:
        return self.self_kv.shape[0]

    def select(self, rows: torch.Tensor) -> None:
        """Reorder the self-attention cache so row ``i`` continues row ``rows[i]`` (beam search).

        Only the slots whose keys / values change are copied. Slot ``(t, i)`` holds what row
        ``writers[t, i]`` wrote at position ``t``; row ``i`` needs what slot ``(t, rows[i])`` holds, so
        the slots to copy are those where the two writers differ. Beams of one source share most of
        their past, so that is a small part of the cache: 5 % of what copying every written position
        would move, in ``bench/translation.py``'s beam search, where it was a tenth of the step's time.
        """
        end, N = self.length, rows.shape[0]
        if self.writers is None:  # a step writes row i's keys / values into slot (position, i)
            self.writers = torch.arange(N, device=rows.device).repeat(self.capacity, 1)
        writers = self.writers[:end]
        wanted = writers[:, rows]  # (end, N): the writer each slot must hold
        position, row = (wanted != writers).nonzero(as_tuple=True)
        if position.numel():
            slots = self.self_kv.view(self.capacity * N, -1)  # (T_max * N, L * 2 * H * Dh), one row per slot
            moved = slots.index_select(0, position * N + rows[row])  # read every source before any write
            slots.index_copy_(0, position * N + row, moved)
            self.moved_slots += position.numel()
        writers.copy_(wanted)

    def layer(self, index: int) -> torch.Tensor:
        """Layer ``index``'s self-attention keys / values ``(T_max, N, 2, H, Dh)``, a view written in place."""
        return self.self_kv[:, :, index]


@dataclass
class _TracedCache(StepCache):
    """What `TransformerDecoder.step` reads from a `DecoderCache`, for `export_step`: one tensor per
    layer ``(t + 1, N, 2, H, Dh)`` (not views of one: the exporter keeps in-place writes to a view
    local to that view, so the step's writes must land in tensors the graph returns); the traced
    step writes position ``length`` of each."""

    layers: list[torch.Tensor]
    memory_kv: torch.Tensor
    memory_mask: torch.Tensor
    length: int

    @property
    def capacity(self) -> int:
        return self.length + 1

    def layer(self, index: int) -> torch.Tensor:
        return self.layers[index]


@register_decoder("transformer")
class TransformerDecoder(StepDecoder):
    """Transformer decoder (Vaswani et al. 2017) over a target prefix and the encoder's `Sequence`.

    ``forward(features, decoder_input=...)`` takes the target prefix (``bos`` + target without its
    last token) as token ids from the batch's context. For generation (a `StepDecoder`), `init_cache`
    computes the memory's cross-attention keys / values once and preallocates the self-attention
    cache; `step` then decodes one position per row.

    Export tensors (`StepDecoder`): memory ``memory_kv (L, 2, rows, H, source, Dh)`` (the
    cross-attention keys / values of every layer) and ``memory_mask (rows, 1, 1, source)`` (additive);
    state ``self_kv (past, rows, L, 2, H, Dh)``, the self-attention cache of the ``past`` positions
    decoded so far (time first, as `DecoderCache`), empty before the first step.

    With ``share_embeddings`` the decoder reads the encoder's token embedding (one shared vocabulary,
    as in the paper); the special token ids come from the data's tokenizer when a run is trained.

    Args:
        vocab_size: tokens in the target vocabulary.
        preset: ``base``, ``small`` or ``tiny`` (see the ``transformer`` encoder).
        d_model, num_layers, num_heads, ffn_dim, dropout: override the preset (dropout: on embeddings and on
            each sub-layer's output, as in the paper).
        attention_dropout: dropout on the attention weights.
        activation: ``relu``, ``gelu`` or ``silu``.
        norm_first: pre-LN (True) or post-LN (False, as in the paper).
        positions: ``sinusoidal`` or ``learned``.
        max_len: the longest target the positions cover.
        pad_id, bos_id, eos_id: special tokens (padding, start of a target, end of a target).
        share_embeddings: use the encoder's token embedding (needs equal vocab_size and d_model).
        scale_embeddings: multiply token embeddings by sqrt(d_model).
        memory_level: on an image encoder (captioning, OCR), the pyramid level attended over, flattened
            to cells with 2-D positions (`StepDecoder.init_memory`); -1: the deepest.

    Shapes:
        memory `Sequence` ``(B, S, C)`` (or a pyramid, see ``memory_level``) + decoder_input ``(B, T)`` -> `Sequence` ``(B, T, d_model)``
        with the target padding mask ``(B, T)``.
    """

    accepts = ("sequence", "pyramid")
    produces = "sequence"
    export_axes = {"memory_kv": {2: "rows", 4: "source"}, "memory_mask": {0: "rows", 3: "source"},
                   "self_kv": {0: "past", 1: "rows"}}

    def __init__(self, in_spec: FeatureSpec, vocab_size: int, preset: str = "base", d_model: int | None = None,
                 num_layers: int | None = None, num_heads: int | None = None, ffn_dim: int | None = None,
                 dropout: float | None = None, attention_dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = True,
                 positions: str = "sinusoidal", max_len: int = 1024, pad_id: int = 0, bos_id: int = 1,
                 eos_id: int = 2, share_embeddings: bool = True, scale_embeddings: bool = True,
                 memory_level: int = -1) -> None:
        super().__init__(in_spec)
        memory_width = self.init_memory(in_spec, memory_level)
        size = resolve_preset(preset, d_model=d_model, num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim,
                              dropout=dropout)
        for name, value in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= value < vocab_size:
                raise ValueError(f"decoder {name} {value} is outside the vocabulary (size {vocab_size})")
        self.d_model, self.vocab_size = size["d_model"], vocab_size
        self.num_heads, self.head_dim = size["num_heads"], size["d_model"] // size["num_heads"]
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.share_embeddings = share_embeddings
        self.embed_scale = math.sqrt(self.d_model) if scale_embeddings else 1.0
        self.embedding = None if share_embeddings else token_embedding(vocab_size, self.d_model, pad_id)
        self.__dict__["_shared_embedding"] = None  # a reference to the encoder's, set by `bind` (not owned)
        self.positions = make_positions(positions, self.d_model, max_len)
        self.dropout = nn.Dropout(size["dropout"])
        self.layers = nn.ModuleList(
            DecoderLayer(self.d_model, size["num_heads"], size["ffn_dim"], memory_width, size["dropout"], activation,
                         norm_first, attention_dropout) for _ in range(size["num_layers"]))
        self.final_norm = nn.LayerNorm(self.d_model) if norm_first else nn.Identity()
        self.out_spec = FeatureSpec("sequence", (self.d_model,))
        init_transformer_weights(self, self.d_model)

    # ---- wiring ---------------------------------------------------------------------------------
    def bind(self, encoder: nn.Module) -> None:
        """Called by `Model` once the encoder is built: with ``share_embeddings``, read its embedding."""
        if not self.share_embeddings:
            return
        shared = getattr(encoder, "token_embedding", None)
        expected = (self.vocab_size, self.d_model)
        if not isinstance(shared, nn.Embedding) or tuple(shared.weight.shape) != expected:
            found = "none" if not isinstance(shared, nn.Embedding) else str(tuple(shared.weight.shape))
            raise SpecError(
                f"decoder 'transformer' has share_embeddings: true, so it reads the encoder's token embedding of "
                f"shape (vocab_size, d_model) = {expected}; the encoder {type(encoder).__name__} has {found}. Give "
                "the encoder the same vocab_size and d_model, or set decoder.share_embeddings: false"
            )
        self.__dict__["_shared_embedding"] = shared

    @property
    def max_length(self) -> int:
        """The longest target the positions cover (``max_len``)."""
        return self.positions.max_len

    @property
    def hidden_size(self) -> int:
        """``d_model``: the width of `step`'s output."""
        return self.d_model

    @property
    def token_embedding(self) -> nn.Embedding:
        """The target token embedding (the encoder's when shared); a tied LM head reads it too."""
        embedding = self.embedding if self.embedding is not None else self.__dict__["_shared_embedding"]
        if embedding is None:
            raise RuntimeError("this decoder shares the encoder's token embedding but was never bound to an encoder; "
                               "build it inside a model (edh.build) or set share_embeddings: false")
        return embedding

    # ---- training / scoring -------------------------------------------------------------------------
    def forward(self, features: Sequence, decoder_input: torch.Tensor | None = None, **context: Any) -> Sequence:
        """Decode every position of a target prefix at once (teacher forcing).

        Args:
            features: the encoder's `Sequence` ``(B, S, C)`` with its padding mask.
            decoder_input: ``(B, T)`` token ids, ``bos`` first, right-padded with ``pad_id``.
        """
        if decoder_input is None:
            raise ValueError("the transformer decoder needs the target prefix: pass decoder_input=(B, T) token ids "
                             "(bos + target[:-1]); translation batches carry it as {'decoder_input': ...}, the third "
                             "element of (inputs, targets, context)")
        memory, memory_padding = self.memory(features)
        T = decoder_input.shape[1]
        x = self.token_embedding(decoder_input) * self.embed_scale + self.positions(T)  # (B, T, D)
        x = self.dropout(x)
        mask = key_padding_mask(memory_padding)
        for layer in self.layers:
            x = layer(x, memory, mask)
        return Sequence(self.final_norm(x), decoder_input == self.pad_id)

    # ---- generation ---------------------------------------------------------------------------------
    def init_cache(self, features: Sequence, max_new_tokens: int, beam_size: int = 1) -> DecoderCache:
        """Cross-attention keys / values of the memory (one matmul for all layers) and an empty self cache.

        Args:
            features: the encoder's `Sequence` ``(B, S, C)``.
            max_new_tokens: positions to preallocate.
            beam_size: rows per source (consecutive rows; they share the source's memory keys / values).
        """
        self.check_length(max_new_tokens)
        memory, padding = features
        L, H, Dh = len(self.layers), self.num_heads, self.head_dim
        memory_kv = self._memory_kv(memory).contiguous()  # once per source: its beams share it (CrossAttention.step)
        rows = memory.shape[0] * beam_size
        self_kv = memory_kv.new_empty(max_new_tokens, rows, L, 2, H, Dh)
        return DecoderCache(self_kv, memory_kv, additive_mask(padding, memory_kv.dtype))

    def step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Decode one new position per row.

        Args:
            tokens: ``(N,)`` the previous token of each row (``bos`` at the first step).
            cache: from `init_cache`; advanced by one position.

        Returns:
            ``(N, d_model)`` the new position's features (the LM head turns them into logits).
        """
        position = cache.length
        if position >= cache.capacity:
            raise ValueError(f"the decoder cache holds {cache.capacity} positions and is full; "
                             "init_cache with a larger max_new_tokens")
        N = tokens.shape[0]
        weight = self.token_embedding.weight
        x = F.embedding(tokens, weight).mul_(self.embed_scale).add_(self.positions(1, position)).view(N, 1, -1)
        for index, layer in enumerate(self.layers):
            x = layer.step(x, cache.layer(index), position, cache.memory_kv[index], cache.memory_mask)
        cache.length = position + 1
        return self.final_norm(x).view(N, -1)

    def _memory_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """``(B, S, C)`` -> ``(L, 2, B, H, S, Dh)`` cross-attention keys / values of every layer (one matmul)."""
        B, S, _ = memory.shape
        L, H, Dh = len(self.layers), self.num_heads, self.head_dim
        weight = torch.cat([layer.cross_attn.kv.weight for layer in self.layers])  # (L*2*D, C)
        bias = torch.cat([layer.cross_attn.kv.bias for layer in self.layers])
        return F.linear(memory, weight, bias).view(B, S, L, 2, H, Dh).permute(2, 3, 0, 4, 1, 5)

    # ---- export (traced; see `StepDecoder`) ------------------------------------------------------
    def export_memory(self, features: Sequence) -> dict[str, torch.Tensor]:
        """``memory_kv (L, 2, B, H, S, Dh)`` and the additive ``memory_mask (B, 1, 1, S)`` (zeros where
        nothing is padded: the graph has no branch on the data)."""
        memory, padding = features
        memory_kv = self._memory_kv(memory).contiguous()
        if padding is None:
            mask = memory.new_zeros(memory.shape[0], 1, 1, memory.shape[1])
        else:
            mask = torch.zeros(padding.shape, dtype=memory_kv.dtype, device=padding.device)
            mask = mask.masked_fill(padding, torch.finfo(memory_kv.dtype).min)[:, None, None, :]
        return {"memory_kv": memory_kv, "memory_mask": mask}

    def export_initial_state(self, memory: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An empty self-attention cache ``self_kv (0, N, L, 2, H, Dh)``, shaped from ``memory_kv``."""
        return {"self_kv": memory["memory_kv"][:, :, :, :, :0].permute(4, 2, 0, 1, 3, 5)}

    def export_step(self, tokens: torch.Tensor, memory: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`step` over ``self_kv (t, N, L, 2, H, Dh)`` -> ``(N, d_model)`` and ``self_kv (t + 1, ...)``."""
        past, memory_kv = state["self_kv"], memory["memory_kv"]
        # (1, N, L, 2, H, Dh): the new position's slot, shaped from memory_kv (past may hold no position)
        empty = torch.zeros_like(memory_kv[:, :, :, :, :1]).permute(4, 2, 0, 1, 3, 5)
        grown = torch.cat([past, empty], dim=0)
        cache = _TracedCache([grown[:, :, index].clone() for index in range(grown.shape[2])], memory_kv,
                             memory["memory_mask"], past.shape[0])
        hidden = self.step(tokens, cache)  # writes position t of every layer's cache
        return hidden, {"self_kv": torch.stack(cache.layers, dim=2)}
