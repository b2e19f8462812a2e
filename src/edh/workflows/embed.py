"""Pooled features of one role: what ``edh embed`` writes for linear probing and retrieval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edh.layers.pooling import global_pool
from edh.workflows.run import Run


def embed_images(run: Run, paths: list[str | Path], role: str = "encoder", batch_size: int = 32) -> np.ndarray:
    """``(N, C)`` float32 pooled features of ``role`` (``encoder``, ``encoder.N`` or ``decoder``)."""
    from edh.workflows.data_check import check_run_info
    from edh.workflows.inputs import reader_for

    check_run_info(run)  # the preprocessing of data.json is what training used
    reader = reader_for(run)
    if not reader.pictures:
        raise ValueError(f"edh embed reads image files, and {run.path} takes {run.info.input_kind} inputs; embed "
                         "with an image run")
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
        inputs = reader.read(run, list(paths[start:start + batch_size]))
        with torch.inference_mode():
            features = model.encoder(inputs)
            if name == "decoder":
                features = model.decoder(features)
            if level:
                features = [features[int(level)]]
            rows.append(global_pool(features).float().cpu())
    return torch.cat(rows).numpy()
