"""Positional encodings for token sequences: fixed sinusoids (Vaswani et al. 2017) or learned."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPositions(nn.Module):
    """Fixed sine / cosine encodings, precomputed for ``max_len`` positions (not saved with the weights).

    Shapes: ``forward(length, offset)`` -> ``(length, dim)``.
    """

    def __init__(self, dim: int, max_len: int = 1024) -> None:
        super().__init__()
        self.max_len = max_len
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
        frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        check_length(offset + length, self.max_len)
        return self.table[offset:offset + length]


class LearnedPositions(nn.Module):
    """One learned vector per position, up to ``max_len``.

    Shapes: ``forward(length, offset)`` -> ``(length, dim)``.
    """

    def __init__(self, dim: int, max_len: int = 1024) -> None:
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        check_length(offset + length, self.max_len)
        return self.embedding.weight[offset:offset + length]


def check_length(length: int, max_len: int) -> None:
    if length > max_len:
        raise ValueError(f"a sequence of {length} tokens is longer than the positional table ({max_len}); "
                         f"build the encoder / decoder with max_len >= {length} or shorten the input")


def make_positions(kind: str, dim: int, max_len: int) -> nn.Module:
    """``sinusoidal`` or ``learned`` positions."""
    if kind == "sinusoidal":
        return SinusoidalPositions(dim, max_len)
    if kind == "learned":
        return LearnedPositions(dim, max_len)
    raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {kind!r}")


def sinusoidal_2d(height: int, width: int, dim: int, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed 2-D sine / cosine encodings of a ``height x width`` grid, row-major: ``(height * width, dim)``.

    The first half of the channels encodes the row, the second half the column (each as the 1-D
    sinusoids of Vaswani et al.), as DETR and ViT-style captioners do; ``dim`` must be a multiple of 4.
    Computed from the grid size, so any image size works.
    """
    if dim % 4:
        raise ValueError(f"2-D sinusoidal positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    frequency = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * frequency  # (H, D/4)
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * frequency  # (W, D/4)
    row_code = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    col_code = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([row_code, col_code], dim=2).reshape(height * width, dim).to(dtype)
