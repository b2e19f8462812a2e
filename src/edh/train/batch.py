"""Batch layout shared by training, evaluation and export (no Lightning import)."""

from __future__ import annotations

from typing import Any


def unpack_batch(batch: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(inputs, targets)`` or ``(inputs, targets, context)``; context goes to ``Model.forward``."""
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    return batch[0], batch[1], {}
