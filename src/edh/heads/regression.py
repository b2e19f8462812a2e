"""Regression from pooled features (object counts, sizes, scores): pool -> MLP -> values."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.core.features import FeatureSpec
from edh.heads.base import Head
from edh.layers.pooling import global_pool
from edh.core.registry import register_head

_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}


@register_head("regression")
class RegressionHead(Head):
    """Global pooling + a small MLP to ``num_outputs`` real values.

    A target of NaN marks a sample without a label for this head (partial labels): it is left out
    of the loss and the metrics.

    Args:
        num_outputs: values per sample.
        hidden: width of the hidden layer (0: a single linear layer).
        loss: ``mse``, ``l1`` or ``smooth_l1``.
        round_predictions: round ``predict``'s values to integers (counts).

    Shapes: features -> ``(B, num_outputs)``.
    """

    accepts = ("pyramid", "sequence", "vector")
    task = "regression"
    function = "global pooling + MLP to real values"
    reads_level = -1

    def __init__(self, in_spec: FeatureSpec, num_outputs: int = 1, hidden: int = 128, loss: str = "smooth_l1",
                 round_predictions: bool = False) -> None:
        super().__init__(in_spec)
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {', '.join(_LOSSES)}, got {loss!r}")
        self.num_outputs, self.loss_name, self.round_predictions = num_outputs, loss, round_predictions
        width = in_spec.width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_outputs)) \
            if hidden else nn.Linear(width, num_outputs)

    def bind_data(self, info: Any) -> None:
        """Refuse another ``num_outputs`` than the data states for this target (``head_defaults``), before
        the first step: the loss would compare values of other shapes."""
        from edh.core.errors import SpecError
        from edh.heads.data_checks import data_target, head_path

        target = data_target(self, info, ("regression",))
        stated = target.defaults.get("num_outputs") if target is not None else None
        if isinstance(stated, int) and stated != self.num_outputs:
            path = head_path(self)
            raise SpecError(f"{path}.num_outputs is {self.num_outputs}, but {target.dataset} gives {stated} values "
                            f"per sample in its {target.key!r} target. Set num_outputs: {stated} in {path}, or leave "
                            "it out to take the data's")

    def forward(self, features: Any, **context: Any) -> torch.Tensor:
        return self.mlp(global_pool(features))  # (B, num_outputs)

    def _targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return targets.float().reshape(outputs.shape[0], -1)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = self._targets(outputs, targets)
        known = ~torch.isnan(targets)
        if not known.any():
            return {self.loss_name: outputs.sum() * 0.0}
        return {self.loss_name: _LOSSES[self.loss_name](outputs.float()[known], targets[known])}

    def predict(self, outputs: torch.Tensor, **meta: Any) -> dict[str, torch.Tensor]:
        values = outputs.float()
        return {"values": values.round() if self.round_predictions else values}

    def make_metrics(self, stage: str = "val"):
        from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

        return MetricCollection({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)})

    def update_metrics(self, metrics, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        targets = self._targets(outputs, targets)
        known = ~torch.isnan(targets)
        if known.any():
            metrics.update(outputs.float()[known], targets[known])

    def format_prediction(self, prediction: dict[str, torch.Tensor], index: int) -> str:
        return ", ".join(f"{v:.3f}" for v in prediction["values"][index].tolist())

    def prediction_json(self, prediction: dict[str, torch.Tensor], index: int, source: Any = None,
                        input_size: Any = None) -> dict[str, Any]:
        """``{"values": [...]}``: one number per output."""
        return {"values": [float(v) for v in prediction["values"][index].reshape(-1).tolist()]}
