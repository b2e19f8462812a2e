"""The Transformer text encoder: token embedding + positions -> N self-attention layers -> a `Sequence`."""

from __future__ import annotations

import math

import torch
from torch import nn

from edh.encoders.base import Encoder
from edh.core.features import FeatureSpec, Sequence
from edh.layers.attention import key_padding_mask
from edh.layers.positional import make_positions
from edh.layers.transformer import EncoderLayer, init_transformer_weights, resolve_preset, token_embedding
from edh.core.registry import register_encoder
from edh.utils.weights import load_encoder_weights


@register_encoder("transformer")
class TransformerEncoder(Encoder):
    """Transformer encoder (Vaswani et al. 2017) over token ids, with a padding mask.

    Sizes come from ``preset`` (``base``: d_model 512, 6 layers, 8 heads, FFN 2048, dropout 0.1;
    ``small``: 256 / 3 / 4 / 1024; ``tiny``: 32 / 2 / 2 / 64); any size given explicitly wins.
    ``vocab_size`` and ``pad_id`` come from the data's tokenizer when a run is trained.

    Args:
        vocab_size: tokens in the (shared) vocabulary.
        preset: ``base``, ``small`` or ``tiny``.
        d_model, num_layers, num_heads, ffn_dim, dropout: override the preset (dropout: on embeddings and on
            each sub-layer's output, as in the paper).
        attention_dropout: dropout on the attention weights.
        activation: ``relu``, ``gelu`` or ``silu`` in the feed-forward blocks.
        norm_first: pre-LN (True, stable without long warmup) or post-LN (False, as in the paper).
        positions: ``sinusoidal`` or ``learned``.
        max_len: the longest sequence the positions cover.
        pad_id: the padding token; padded positions are masked out of attention.
        scale_embeddings: multiply token embeddings by sqrt(d_model).
        weights: a local weight file saved from this encoder.

    Shapes:
        token ids ``(B, S)`` -> `Sequence` of ``(B, S, d_model)`` with padding mask ``(B, S)``.
    """

    input_kind = "tokens"
    input_axes = {0: "batch", 1: "source"}
    produces = "sequence"
    default_input_size = (16,)

    def __init__(self, vocab_size: int, preset: str = "base", d_model: int | None = None,
                 num_layers: int | None = None, num_heads: int | None = None, ffn_dim: int | None = None,
                 dropout: float | None = None, attention_dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = True,
                 positions: str = "sinusoidal", max_len: int = 1024, pad_id: int = 0, scale_embeddings: bool = True,
                 weights: str | None = None) -> None:
        super().__init__()
        size = resolve_preset(preset, d_model=d_model, num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim,
                              dropout=dropout)
        self.d_model, self.pad_id, self.vocab_size = size["d_model"], pad_id, vocab_size
        self.in_channels = 0
        self.embed_scale = math.sqrt(self.d_model) if scale_embeddings else 1.0
        self.token_embedding = token_embedding(vocab_size, self.d_model, pad_id)
        self.positions = make_positions(positions, self.d_model, max_len)
        self.dropout = nn.Dropout(size["dropout"])
        self.layers = nn.ModuleList(
            EncoderLayer(self.d_model, size["num_heads"], size["ffn_dim"], size["dropout"], activation, norm_first,
                         attention_dropout)
            for _ in range(size["num_layers"]))
        self.final_norm = nn.LayerNorm(self.d_model) if norm_first else nn.Identity()
        self.out_spec = FeatureSpec("sequence", (self.d_model,))
        init_transformer_weights(self, self.d_model)
        if weights:
            load_encoder_weights(self, weights)

    def check_input(self, inputs: torch.Tensor) -> None:
        if inputs.ndim != 2 or inputs.dtype not in (torch.long, torch.int32):
            raise ValueError(f"the transformer encoder takes token ids shaped (B, S) as integers, got "
                             f"{tuple(inputs.shape)} {inputs.dtype}")

    def forward(self, tokens: torch.Tensor) -> Sequence:
        """Args: tokens ``(B, S)`` right-padded with ``pad_id``."""
        padding = tokens == self.pad_id  # (B, S)
        x = self.token_embedding(tokens) * self.embed_scale + self.positions(tokens.shape[1])  # (B, S, D)
        x = self.dropout(x)
        mask = key_padding_mask(padding)
        for layer in self.layers:
            x = layer(x, mask)
        return Sequence(self.final_norm(x), padding)
