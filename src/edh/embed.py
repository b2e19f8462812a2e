"""Pooled features of one role: what ``edh embed`` writes for linear probing and retrieval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edh.features import Sequence
from edh.run import Run


def pool(features: Any) -> torch.Tensor:
    """``(B, C)`` from a pyramid (global mean of its deepest level), a `Sequence` (mean over
    non-padding tokens) or a vector."""
    if isinstance(features, Sequence):
        x, mask = features
        keep = torch.ones(x.shape[:2], device=x.device) if mask is None else (~mask).float()
        return (x * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
    if isinstance(features, (list, tuple)):
        features = features[-1]
    return features.mean(dim=(2, 3)) if features.ndim == 4 else features


def embed_images(run: Run, paths: list[str | Path], role: str = "encoder", batch_size: int = 32) -> np.ndarray:
    """``(N, C)`` float32 pooled features of ``role`` (``encoder``, ``encoder.N`` or ``decoder``)."""
    from edh.predict import load_inputs

    model = run.model.eval()
    name, _, level = role.partition(".")
    if name not in ("encoder", "decoder") or (level and not level.isdigit()):
        raise ValueError(f"--role must be encoder, encoder.N or decoder, got {role!r}")
    if name == "decoder" and model.decoder is None:
        raise ValueError("this run's model has no decoder; use --role encoder")
    if level:
        model.source_spec(role, "--role")  # checks the level exists
    rows = []
    for start in range(0, len(paths), batch_size):
        inputs = load_inputs(run, list(paths[start:start + batch_size]))
        with torch.inference_mode():
            features = model.encoder(inputs)
            if name == "decoder":
                features = model.decoder(features)
            if level:
                features = [features[int(level)]]
            rows.append(pool(features).float().cpu())
    return torch.cat(rows).numpy()
