"""The Head contract: features of one source in, one task's outputs, loss and predictions out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edh.features import FeatureSpec


class Head(nn.Module):
    """Maps features to one task's result.

    Built from the `FeatureSpec` of its source (``in_spec``). Subclasses implement:

    - ``forward(features, **context)``: raw outputs (logits, maps, ...). ``context`` holds
      ``input_size`` (the ``(H, W)`` of the model input) and, when training, ``targets``.
    - ``loss(outputs, targets) -> dict[str, Tensor]``: named loss terms for this head's targets.
    - ``predict(outputs, **meta)``: post-processed predictions (probabilities, masks, boxes, tokens).
    - ``make_metrics(stage)`` / ``update_metrics(metrics, outputs, targets)``: a torchmetrics object
      and how to feed it, used for validation and ``edh eval``; ``summarize`` turns its values into
      a report.
    - ``format_prediction`` / ``write_predictions``: what ``edh predict`` prints and draws.

    Attributes:
        accepts: the `FeatureSpec` kinds this head can be built on.
        task: a short word for what the head does (``classification``, ``segmentation``...).
    """

    accepts: tuple[str, ...] = ("pyramid", "sequence", "vector")
    task: str = "generic"

    def __init__(self, in_spec: FeatureSpec) -> None:
        super().__init__()
        self.in_spec = in_spec

    def forward(self, features: Any, **context: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def predict(self, outputs: Any, **meta: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def select_targets(self, targets: dict[str, Any], key: str) -> Any:
        """This head's targets out of the batch's target dict; ``key`` is the head spec's ``target``
        (default: the head's name). Most heads read ``targets[key]``; a head that learns from several
        entries (detection: ``boxes`` and ``labels``) overrides this. A missing entry raises
        ``KeyError(entry)``."""
        return targets[key]

    def make_metrics(self, stage: str = "val") -> Any:
        """Metrics for ``stage`` (``val`` during training; ``test`` may add per-class detail)."""
        return None

    def update_metrics(self, metrics: Any, outputs: Any, targets: Any) -> None:
        pass

    def summarize(self, values: dict[str, torch.Tensor], out_dir: Path | None = None) -> tuple[dict[str, float], list[str]]:
        """Computed metric values -> (scalars to print, extra report lines); may write plots to ``out_dir``."""
        return {k: float(v) for k, v in values.items() if v.numel() == 1}, []

    def format_prediction(self, prediction: Any, index: int) -> str:
        """One line describing sample ``index`` of ``predict``'s result (for ``edh predict``)."""
        return ""

    def write_predictions(self, prediction: Any, images: torch.Tensor, paths: list[Path], out_dir: Path) -> list[Path]:
        """Write pictures of the predictions (overlays, boxes) to ``out_dir``; return the files written."""
        return []

    def prediction_records(self, prediction: Any, paths: list[Path], input_size: tuple[int, int],
                           info: Any = None) -> list[dict[str, Any]]:
        """JSON-ready records of these predictions (detection: COCO results) for the images at
        ``paths`` (model input ``input_size``; ``info`` is the run's `DataInfo`). ``edh predict --out``
        gathers them over all images into ``OUT/<head>.json``. Default: none."""
        return []
