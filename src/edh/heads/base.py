"""The Head contract: features of one source in, one task's outputs, loss and predictions out."""

from __future__ import annotations

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
    - ``make_metrics()`` / ``update_metrics(metrics, outputs, targets)``: a torchmetrics object
      and how to feed it, used for validation and ``edh eval``.

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

    def make_metrics(self) -> Any:
        return None

    def update_metrics(self, metrics: Any, outputs: Any, targets: Any) -> None:
        pass
