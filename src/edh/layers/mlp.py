"""The position-wise feed-forward block of a Transformer layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edh.layers import packed

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


class FeedForward(nn.Module):
    """Linear -> activation -> dropout -> linear.

    Args:
        dim: input and output width ``D``.
        hidden: inner width (2048 in the base Transformer).
        activation: ``relu``, ``gelu`` or ``silu``.
        dropout: dropout after the activation.

    Shapes: ``(..., D)`` -> ``(..., D)``.
    """

    def __init__(self, dim: int, hidden: int, activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Inference-only forward with no module-call overhead (used per generated token)."""
        hidden = self.act(packed.linear(x, self.fc1.weight, self.fc1.bias))
        return packed.linear(hidden, self.fc2.weight, self.fc2.bias)
