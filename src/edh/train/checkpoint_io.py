"""Lightning checkpoint I/O that writes atomically and reads weights-only."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from edh.utils.io import torch_load, torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through a temp file + fsync + rename; loads with ``torch.load(weights_only=True)``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        torch_save(path, checkpoint)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return torch_load(path, map_location=map_location or "cpu")
