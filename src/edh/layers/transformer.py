"""Transformer encoder and decoder layers (pre- or post-LayerNorm) and the size presets.

The layers are shared by the ``transformer`` encoder and decoder; the decoder layer also has a
``step`` for one new position that uses a preallocated self-attention cache and precomputed
cross-attention keys / values, calling the functional ops directly (no module-call overhead).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edh.layers.attention import CrossAttention, SelfAttention
from edh.layers.mlp import FeedForward

PRESETS: dict[str, dict[str, Any]] = {
    # Vaswani et al. 2017, "base": 6 + 6 layers, d_model 512, 8 heads, FFN 2048, dropout 0.1.
    "base": {"d_model": 512, "num_layers": 6, "num_heads": 8, "ffn_dim": 2048, "dropout": 0.1},
    "small": {"d_model": 256, "num_layers": 3, "num_heads": 4, "ffn_dim": 1024, "dropout": 0.1},
    "tiny": {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "dropout": 0.0},
}


def resolve_preset(preset: str, **given: Any) -> dict[str, Any]:
    """The preset's sizes with every option that is not None in ``given`` taking precedence."""
    if preset not in PRESETS:
        raise ValueError(f"unknown transformer preset {preset!r}; presets: {', '.join(PRESETS)}")
    return {key: (given[key] if given.get(key) is not None else value) for key, value in PRESETS[preset].items()}


def _norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(x)`` without the module call (decoding steps run it 3 times per layer per token)."""
    return torch.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class EncoderLayer(nn.Module):
    """Self-attention + feed-forward, each with a residual; LayerNorm before (pre-LN) or after (post-LN).

    ``dropout`` applies to each sub-layer's output before the residual sum (as in the paper);
    ``attention_dropout`` to the attention weights.

    Shapes: ``(B, S, D)`` -> ``(B, S, D)``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = True, attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = SelfAttention(dim, num_heads, attention_dropout)
        self.mlp = FeedForward(dim, ffn_dim, activation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x ``(B, S, D)``; mask ``(B, 1, 1, S)`` True where a key is a real token, or None."""
        if self.norm_first:
            x = x + self.dropout(self.self_attn(self.norm1(x), mask))
            return x + self.dropout(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, mask)))
        return self.norm2(x + self.dropout(self.mlp(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the memory and feed-forward, each with a residual.

    Dropout as in `EncoderLayer`.

    Shapes: ``(B, T, D)`` and memory ``(B, S, memory_dim)`` -> ``(B, T, D)``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, memory_dim: int | None = None, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = True, attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = SelfAttention(dim, num_heads, attention_dropout)
        self.cross_attn = CrossAttention(dim, num_heads, memory_dim, attention_dropout)
        self.mlp = FeedForward(dim, ffn_dim, activation)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x ``(B, T, D)`` (right-padded); memory ``(B, S, C)``; memory_mask ``(B, 1, 1, S)`` or None."""
        drop = self.dropout
        if self.norm_first:
            x = x + drop(self.self_attn(self.norm1(x), causal=True))
            x = x + drop(self.cross_attn(self.norm2(x), memory, memory_mask))
            return x + drop(self.mlp(self.norm3(x)))
        x = self.norm1(x + drop(self.self_attn(x, causal=True)))
        x = self.norm2(x + drop(self.cross_attn(x, memory, memory_mask)))
        return self.norm3(x + drop(self.mlp(x)))

    def step(self, x: torch.Tensor, cache: torch.Tensor, position: int, memory_kv: torch.Tensor,
             memory_mask: torch.Tensor | None) -> torch.Tensor:
        """One new position per row (inference only).

        Args:
            x: ``(N, 1, D)``.
            cache: ``(T_max, N, 2, H, Dh)`` this layer's self-attention keys / values (written in place).
            position: index of the new position.
            memory_kv: ``(2, B, H, S, Dh)`` this layer's cross-attention keys / values, one memory per
                ``N / B`` consecutive rows (`CrossAttention.step`).
            memory_mask: ``(B, 1, 1, S)`` additive float mask, or None.
        """
        if self.norm_first:
            x = x + self.self_attn.step(_norm(x, self.norm1), cache, position)
            x = x + self.cross_attn.step(_norm(x, self.norm2), memory_kv, memory_mask)
            return x + self.mlp.step(_norm(x, self.norm3))
        x = _norm(x + self.self_attn.step(x, cache, position), self.norm1)
        x = _norm(x + self.cross_attn.step(x, memory_kv, memory_mask), self.norm2)
        return _norm(x + self.mlp.step(x), self.norm3)


def init_transformer_weights(module: nn.Module, d_model: int) -> None:
    """Xavier-uniform linear weights with zero biases; token embeddings ~ N(0, d_model^-1/2).

    The embedding scale matches embeddings multiplied by sqrt(d_model) (and a tied output layer).
    """
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding) and getattr(sub, "is_token_embedding", False):
            nn.init.normal_(sub.weight, std=d_model ** -0.5)
            if sub.padding_idx is not None:
                with torch.no_grad():
                    sub.weight[sub.padding_idx].zero_()


def token_embedding(vocab_size: int, d_model: int, pad_id: int) -> nn.Embedding:
    """A token embedding whose padding row stays zero."""
    if not 0 <= pad_id < vocab_size:
        raise ValueError(f"pad_id {pad_id} is outside the vocabulary (size {vocab_size})")
    embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
    embedding.is_token_embedding = True
    return embedding
