"""Global pooling of any `FeatureSpec` kind to a vector ``(B, C)``: shared by heads and ``edh embed``."""

from __future__ import annotations

from typing import Any

import torch

from edh.core.features import Sequence

POOLS = ("avg", "max", "avgmax")


def global_pool(features: Any, pool: str = "avg") -> torch.Tensor:
    """``(B, C)`` from a pyramid (its deepest level, pooled over ``H, W``), a `Sequence` (mean over
    non-padding tokens) or a vector (returned as it is).

    Args:
        pool: ``avg``, ``max`` or ``avgmax`` (the mean of both) for maps; sequences are always averaged.
    """
    if isinstance(features, Sequence):
        x, mask = features  # (B, T, C), (B, T) True at padding
        if mask is None:
            return x.mean(dim=1)
        keep = (~mask).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        return (x * keep).sum(1) / keep.sum(1).clamp_min(1)
    if isinstance(features, (list, tuple)):
        features = features[-1]
    if features.ndim == 2:
        return features
    if pool == "avg":
        return features.mean(dim=(2, 3))  # (B, C)
    peak = features.amax(dim=(2, 3))
    return peak if pool == "max" else 0.5 * (peak + features.mean(dim=(2, 3)))
