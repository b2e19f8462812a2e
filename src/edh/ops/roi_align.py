"""Multi-scale RoIAlign (He et al. 2017, "Mask R-CNN"; levels by Lin et al. 2017, FPN eq. 1) as one
weighted gather: torchvision's result, several times faster on CPU.

Each output bin of RoIAlign averages ``sampling_ratio**2`` bilinear samples, and each sample mixes
4 feature-map pixels: a bin is a weighted sum of ``4 sampling_ratio**2`` rows of the pyramid seen
as a ``(pixels, channels)`` table. `F.embedding_bag` (``mode="sum"``, ``per_sample_weights``) computes
exactly that, for every region of every level in one call, on all threads, with a fast backward
(a weighted scatter-add into the table). torchvision's CPU kernels loop over regions on one thread;
its backward is the slowest part of a Faster R-CNN train step. ``python bench/detection.py`` measures
the whole step; ``tests/test_roi_align.py`` checks values and gradients against torchvision.

Where the gather cannot stand in (an adaptive ``sampling_ratio <= 0``, whose sample count varies per
region; a non-CPU tensor, where torchvision's kernels are the fast ones; tracing and ONNX export,
which need torchvision's ``RoiAlign`` operator) the module calls `torchvision.ops.MultiScaleRoIAlign`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign
from torchvision.ops import box_area


def _fast_path(features: list[torch.Tensor], sampling_ratio: int) -> bool:
    return (sampling_ratio > 0 and all(f.device.type == "cpu" for f in features)
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export())


def _level_scale(feature_size: int, image_size: int) -> float:
    """The power of two closest to feature / image size (torchvision's ``_infer_scale``)."""
    return 2.0 ** round(math.log2(feature_size / image_size))


def _axis_samples(start: torch.Tensor, length: torch.Tensor, size: torch.Tensor, output_size: int,
                  sampling_ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel indices ``(R, output_size, 2 sampling_ratio)`` and their bilinear weights along one axis.

    Follows torchvision's ``bilinear_interpolate``: a sample more than one pixel outside the map
    weighs 0; one inside is clamped to the map; its low and high neighbours share ``1 - frac`` and
    ``frac``."""
    bins = torch.arange(output_size, dtype=start.dtype, device=start.device).view(1, -1, 1)
    steps = (torch.arange(sampling_ratio, dtype=start.dtype, device=start.device) + 0.5).view(1, 1, -1)
    bin_size = (length / output_size).view(-1, 1, 1)
    coords = start.view(-1, 1, 1) + bins * bin_size + steps * bin_size / sampling_ratio  # (R, S, s)
    size = size.view(-1, 1, 1)
    inside = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0)
    low = coords.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coords), coords - low) * inside
    weights = torch.stack([(1 - frac) * inside, frac], dim=-1)  # (R, S, s, 2)
    indices = torch.stack([low, high], dim=-1).long()
    return indices.flatten(2), weights.flatten(2)


def multiscale_roi_align(features: list[torch.Tensor], boxes: list[torch.Tensor], levels: torch.Tensor,
                         scales: list[float], output_size: int, sampling_ratio: int,
                         aligned: bool = False) -> torch.Tensor:
    """RoIAlign of each region on its level, as one `F.embedding_bag` over all levels.

    Args:
        features: per level ``(N, C, H_l, W_l)`` (any memory format; channels_last avoids a copy).
        boxes: per image ``(R_i, 4)`` xyxy in image pixels.
        levels: ``(R,)`` the level index of each region (regions in image order).
        scales: feature size / image size per level.
        output_size, sampling_ratio, aligned: as `torchvision.ops.roi_align` (``sampling_ratio > 0``).

    Returns:
        ``(R, C, output_size, output_size)``, in the dtype of the first level. Like torchvision's
        autocast rule for RoIAlign, bfloat16 / float16 levels are gathered (and their gradients
        summed) in float32.
    """
    out_dtype, device, channels = features[0].dtype, features[0].device, features[0].shape[1]
    dtype = torch.float32 if out_dtype in (torch.bfloat16, torch.float16) else out_dtype
    coord_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    image = torch.cat([torch.full((len(b),), i, dtype=torch.long, device=device) for i, b in enumerate(boxes)])
    regions = torch.cat(boxes).to(coord_dtype)
    tables = [f.to(dtype).permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in features]  # (N H W, C) each
    first_row = torch.tensor([0] + [len(t) for t in tables[:-1]], device=device).cumsum(0)
    heights = torch.tensor([f.shape[2] for f in features], device=device)
    widths = torch.tensor([f.shape[3] for f in features], device=device)
    scale = torch.tensor(scales, dtype=coord_dtype, device=device)[levels]
    height, width = heights[levels], widths[levels]
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (regions * scale[:, None] - offset).unbind(dim=1)
    region_w, region_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision: a region is at least one pixel wide and high
        region_w, region_h = region_w.clamp(min=1.0), region_h.clamp(min=1.0)
    rows, row_weights = _axis_samples(y1, region_h, height.to(coord_dtype), output_size, sampling_ratio)
    cols, col_weights = _axis_samples(x1, region_w, width.to(coord_dtype), output_size, sampling_ratio)
    n, s, k = len(regions), output_size, 2 * sampling_ratio
    base = first_row[levels] + image * height * width  # the region's image on its level, in the table
    index = base.view(n, 1, 1, 1, 1) + rows.view(n, s, 1, k, 1) * width.view(n, 1, 1, 1, 1) + cols.view(n, 1, s, 1, k)
    weight = row_weights.view(n, s, 1, k, 1) * col_weights.view(n, 1, s, 1, k) / sampling_ratio**2
    table = torch.cat(tables) if len(tables) > 1 else tables[0]
    pooled = F.embedding_bag(index.reshape(-1, k * k), table, per_sample_weights=weight.reshape(-1, k * k).to(dtype),
                             mode="sum")  # (R S S, C)
    return pooled.view(n, s, s, channels).permute(0, 3, 1, 2).to(out_dtype)


class MultiScaleRoIAlign(nn.Module):
    """`torchvision.ops.MultiScaleRoIAlign`'s result (same level rule, same sampling), computed by
    `multiscale_roi_align` on CPU; torchvision's module elsewhere (see the module docstring).

    Args:
        level_names: the keys of the pyramid levels it reads, highest resolution first.
        output_size, sampling_ratio: RoIAlign settings.
        canonical_scale, canonical_level: FPN's level rule (a 224-pixel region goes to level 4).
    """

    def __init__(self, level_names: list[str], output_size: int, sampling_ratio: int,
                 canonical_scale: int = 224, canonical_level: int = 4) -> None:
        super().__init__()
        self.level_names = list(level_names)
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        self.reference = TorchvisionMultiScaleRoIAlign(self.level_names, output_size, sampling_ratio,
                                                       canonical_scale=canonical_scale,
                                                       canonical_level=canonical_level)

    def forward(self, levels: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_size: tuple[int, int]) -> torch.Tensor:
        """Region features ``(R, C, S, S)`` for the regions ``boxes`` (per image, xyxy pixels) of
        an ``image_size`` (height, width) batch."""
        features = [levels[name] for name in self.level_names]
        if not _fast_path(features, self.sampling_ratio):
            return self.reference(levels, boxes, [tuple(image_size)] * len(boxes))
        scales = [_level_scale(f.shape[-2], image_size[0]) for f in features]
        return multiscale_roi_align(features, boxes, self.assign_levels(boxes, scales), scales, self.output_size,
                                    self.sampling_ratio)

    def assign_levels(self, boxes: list[torch.Tensor], scales: list[float]) -> torch.Tensor:
        """FPN eq. 1 as torchvision's ``LevelMapper``: ``floor(4 + log2(sqrt(area) / 224))``, clamped
        to the levels there are, counted from the first."""
        k_min, k_max = -math.log2(scales[0]), -math.log2(scales[-1])
        size = torch.sqrt(torch.cat([box_area(b) for b in boxes]))
        level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_scale)
                            + torch.tensor(1e-6, dtype=size.dtype))
        return (level.clamp(min=k_min, max=k_max).to(torch.int64) - int(k_min))
