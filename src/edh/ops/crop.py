"""Cropping maps to a size: fully convolutional roles overshoot odd input sizes and cut back."""

from __future__ import annotations

import torch


def crop_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``x`` cut to ``size`` at the bottom / right (a view; nothing happens when it already fits).

    While tracing (ONNX export) the slice is always recorded, with ends that follow the traced sizes:
    a map that fits at the traced input size may overshoot at another one (dynamic height / width).
    """
    if torch.jit.is_tracing():
        return x[..., :size[0], :size[1]]
    h, w = int(size[0]), int(size[1])
    return x if x.shape[-2] == h and x.shape[-1] == w else x[..., :h, :w]
