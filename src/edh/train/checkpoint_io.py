"""Lightning checkpoint I/O that writes atomically and reads weights-only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from edh.utils.io import torch_load, torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through a temp file + fsync + rename; loads with ``torch.load(weights_only=True)``.

    Args:
        after_save: called with the path of each checkpoint once it is complete on disk (a ``--force``
            start deletes the run it replaces then).

    Attributes:
        last: ``{"path", "epoch", "step"}`` of the newest checkpoint this process wrote or loaded.
    """

    def __init__(self, after_save: Callable[[Path], None] | None = None) -> None:
        super().__init__()
        self.after_save = after_save
        self.last: dict[str, Any] | None = None

    def _remember(self, checkpoint: dict[str, Any], path: Any) -> None:
        self.last = {"path": str(path), "epoch": checkpoint.get("epoch"), "step": checkpoint.get("global_step")}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        torch_save(path, checkpoint)
        self._remember(checkpoint, path)
        if self.after_save is not None:
            self.after_save(Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = torch_load(path, map_location=map_location or "cpu")
        if isinstance(checkpoint, dict):
            self._remember(checkpoint, path)
        return checkpoint
