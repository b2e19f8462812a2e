"""Multi-head attention through ``torch.nn.functional.scaled_dot_product_attention``.

`SelfAttention` projects queries, keys and values with one fused matmul; `CrossAttention` projects
queries from the decoder and keys / values (one fused matmul) from the encoder's memory, so a
decoder can compute the memory's keys and values once per generated sequence. Both offer a
``step`` for one new position that reads (and, for self-attention, writes) a preallocated cache.

Masks follow ``scaled_dot_product_attention``: a boolean mask is True where attention is allowed;
a float mask is added to the scores. Key-padding masks are shaped ``(B, 1, 1, S)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edh.layers import packed


def key_padding_mask(padding: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, S)`` True-at-padding -> ``(B, 1, 1, S)`` True-where-attending, or None without padding."""
    if padding is None or not bool(padding.any()):
        return None
    return ~padding[:, None, None, :]


def additive_mask(padding: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``(B, S)`` True-at-padding -> ``(B, 1, 1, S)`` float mask (0 or the dtype's minimum) for decoding."""
    if padding is None or not bool(padding.any()):
        return None
    mask = torch.zeros(padding.shape, dtype=dtype, device=padding.device)
    return mask.masked_fill_(padding, torch.finfo(dtype).min)[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection.

    Args:
        dim: model width ``D`` (divisible by ``num_heads``).
        num_heads: attention heads ``H``; each has width ``D / H``.
        dropout: attention dropout (training only).
        bias: biases in the projections.

    Shapes: ``(B, T, D)`` -> ``(B, T, D)``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} is not divisible by num_heads {num_heads}; pick a divisor of {dim}")
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Attend over all of ``x`` (``causal``: each position sees itself and earlier ones only).

        Args:
            x: ``(B, T, D)``.
            mask: ``(B, 1, 1, T)`` key mask (True = attend), or None; not together with ``causal``.
            causal: mask later positions (a decoder's self-attention over right-padded targets, whose
                padding only ever follows the real tokens).
        """
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def step(self, x: torch.Tensor, cache: torch.Tensor, position: int) -> torch.Tensor:
        """One new position per row: write its key / value at ``position`` and attend over ``0..position``.

        Args:
            x: ``(N, 1, D)``.
            cache: ``(T_max, N, 2, H, Dh)`` keys and values of this layer (time first), written in place.
            position: index of the new position.
        """
        N, _, D = x.shape
        qkv = packed.linear(x, self.qkv.weight, self.qkv.bias).view(N, 3, self.num_heads, self.head_dim)
        cache[position] = qkv[:, 1:]  # one copy for K and V
        k, v = cache[:position + 1].permute(2, 1, 3, 0, 4)  # written (t, N, 2, H, Dh) -> 2 x (N, H, t, Dh)
        y = F.scaled_dot_product_attention(qkv[:, 0, :, None], k, v)  # (N, H, 1, Dh)
        return packed.linear(y.reshape(N, 1, D), self.out.weight, self.out.bias)


class CrossAttention(nn.Module):
    """Multi-head attention from a decoder's positions to an encoder's memory.

    Args:
        dim: decoder width ``D``.
        num_heads: attention heads ``H``.
        memory_dim: encoder width (defaults to ``dim``).
        dropout: attention dropout (training only).
        bias: biases in the projections.

    Shapes: ``(B, T, D)`` and memory ``(B, S, memory_dim)`` -> ``(B, T, D)``.
    """

    def __init__(self, dim: int, num_heads: int, memory_dim: int | None = None, dropout: float = 0.0,
                 bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} is not divisible by num_heads {num_heads}; pick a divisor of {dim}")
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(memory_dim or dim, 2 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def memory_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """Keys and values of the memory: ``(B, S, memory_dim)`` -> ``(2, B, H, S, Dh)``."""
        B, S, _ = memory.shape
        return self.kv(memory).view(B, S, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x ``(B, T, D)``; memory ``(B, S, memory_dim)``; mask ``(B, 1, 1, S)`` (True = attend)."""
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k, v = self.memory_kv(memory)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def step(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One position per row against precomputed memory keys / values.

        ``kv`` may hold one memory per group of ``N / B`` consecutive rows (beam search's beams of one
        source): those rows then attend as that memory's queries, so its keys and values are stored and
        read once, not once per beam.

        Args:
            x: ``(N, 1, D)``.
            kv: ``(2, B, H, S, Dh)`` from `memory_kv`, ``B`` dividing ``N``.
            mask: ``(B, 1, 1, S)`` additive float mask, or None.
        """
        N, _, D = x.shape
        B = kv.shape[1]
        q = packed.linear(x, self.q.weight, self.q.bias).view(B, N // B, self.num_heads, self.head_dim)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), kv[0], kv[1], attn_mask=mask)  # (B, H, N / B, Dh)
        return packed.linear(y.transpose(1, 2).reshape(N, 1, D), self.out.weight, self.out.bias)
