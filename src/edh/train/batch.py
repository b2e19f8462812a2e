"""Batch layout shared by training, evaluation and export (no Lightning import)."""

from __future__ import annotations

from typing import Any


def unpack_batch(batch: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(inputs, targets)`` or ``(inputs, targets, context)``; context goes to ``Model.forward``.

    The targets also hold the model input as ``targets["inputs"]`` (what a reconstruction learns from).
    """
    inputs, targets = batch[0], batch[1]
    targets = {"inputs": inputs, **targets} if isinstance(targets, dict) else targets
    return inputs, targets, (batch[2] if len(batch) == 3 else {})
