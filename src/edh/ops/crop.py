"""Cropping maps to a size: fully convolutional roles overshoot odd input sizes and cut back."""

from __future__ import annotations

import torch


def crop_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``x`` cut to ``size`` at the bottom / right (a view; nothing happens when it already fits)."""
    h, w = int(size[0]), int(size[1])
    return x if x.shape[-2] == h and x.shape[-1] == w else x[..., :h, :w]
