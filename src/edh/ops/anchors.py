"""Anchor boxes and anchor points on a feature pyramid.

`cell_anchors` gives the zero-centred anchors of one location exactly as torchvision's
``AnchorGenerator`` does (so weights trained with torchvision decode the same boxes);
`AnchorGrid` tiles them over every level and caches the result per feature-map size, so
repeated calls at one input size cost a dictionary lookup. `grid_points` gives the location
centres an anchor-free head regresses from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["AnchorGrid", "cell_anchors", "grid_points"]


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Zero-centred anchors ``(len(aspect_ratios) * len(sizes), 4)`` of one location, rounded.

    ``aspect_ratio`` is height / width; the order (ratio-major) matches torchvision's.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_points(grid_size: tuple[int, int], stride: int, offset: float = 0.5, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Centres ``(H * W, 2)`` (x, y) of the locations of an ``(H, W)`` map with the given stride, row-major."""
    height, width = grid_size
    xs = (torch.arange(width, device=device, dtype=dtype) + offset) * stride
    ys = (torch.arange(height, device=device, dtype=dtype) + offset) * stride
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


class AnchorGrid:
    """Anchors of every pyramid level, tiled and cached by feature-map size.

    Args:
        sizes: anchor sizes per level (``((32,), (64,), ...)``), in input pixels.
        aspect_ratios: height / width ratios per level.
        strides: stride of each level relative to the input.

    A call with the ``(H_i, W_i)`` of each level returns ``(sum_i H_i * W_i * A_i, 4)`` anchors in
    location-major, anchor-minor order (torchvision's), and the count per level.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]) -> None:
        if not len(sizes) == len(aspect_ratios) == len(strides):
            raise ValueError(f"anchor sizes ({len(sizes)} levels), aspect ratios ({len(aspect_ratios)}) and strides "
                             f"({len(strides)}) must give one entry per pyramid level")
        self.cells = [cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios)]
        self.strides = [int(s) for s in strides]
        self._cache: dict[tuple, tuple[torch.Tensor, list[int]]] = {}

    @property
    def num_anchors(self) -> list[int]:
        """Anchors per location of each level."""
        return [len(c) for c in self.cells]

    def __call__(self, grid_sizes: Sequence[tuple[int, int]], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, list[int]]:
        key = (tuple(tuple(g) for g in grid_sizes), str(device), dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if len(grid_sizes) != len(self.cells):
            raise ValueError(f"the anchor grid was set up for {len(self.cells)} pyramid levels but the features have "
                             f"{len(grid_sizes)}; give anchor sizes and aspect ratios for every level")
        levels = []
        for (height, width), stride, cell in zip(grid_sizes, self.strides, self.cells):
            xs = torch.arange(width, dtype=torch.float32) * stride
            ys = torch.arange(height, dtype=torch.float32) * stride
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([x, y, x, y], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
            levels.append((shifts + cell.view(1, -1, 4)).reshape(-1, 4))  # (H*W*A, 4)
        anchors = torch.cat(levels).to(device=device, dtype=dtype)
        result = (anchors, [len(level) for level in levels])
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = result
        return result
