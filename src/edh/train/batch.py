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


def task_targets(model: Any, name: str, head: Any, targets: dict[str, Any]) -> Any:
    """``head.select_targets`` for the task ``name``, with a message naming the targets there are."""
    try:
        return head.select_targets(targets, model.target_key(name))
    except KeyError as missing:
        raise KeyError(f"head {name!r} learns from target {missing.args[0]!r}, but the batch only has targets "
                       f"{sorted(targets)}; set heads.{name}.target to one of them") from None
