"""Image (or sequence) classification: pool -> dropout -> linear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.core.features import FeatureSpec
from edh.heads.base import Head
from edh.layers.pooling import POOLS, global_pool
from edh.core.registry import register_head

IGNORE = -1  # a sample without this head's label (partial labels) carries -1


@register_head("classification")
class ClassificationHead(Head):
    """Global pooling + dropout + linear.

    Reads the deepest pyramid level (or a `Sequence`, mean-pooled over non-padding tokens, or a
    vector). Labels of ``-1`` mark samples without a label for this head; they are left out of the
    loss and metrics.

    Args:
        num_classes: number of classes.
        class_names: a name per class (shown by predict and eval; used to map rows when classes change).
        pool: ``avg``, ``max`` or ``avgmax`` (mean of both).
        dropout: dropout before the linear layer.
        label_smoothing: cross-entropy label smoothing.
        top_k: how many classes ``predict`` returns and the top-k metric counts.

    Shapes: features -> logits ``(B, num_classes)``.
    """

    accepts = ("pyramid", "sequence", "vector")
    task = "classification"
    function = "global pooling + dropout + linear to class scores"
    reads_level = -1  # the deepest pyramid level

    def __init__(self, in_spec: FeatureSpec, num_classes: int, class_names: list[str] | None = None,
                 pool: str = "avg", dropout: float = 0.0, label_smoothing: float = 0.0, top_k: int = 5) -> None:
        super().__init__(in_spec)
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        if pool not in POOLS:
            raise ValueError(f"pool must be avg, max or avgmax, got {pool!r}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.pool = pool
        self.label_smoothing = label_smoothing
        self.top_k = min(top_k, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_spec.width, num_classes)

    def bind_data(self, info: Any) -> None:
        """Refuse data with more classes than ``num_classes`` before the first step (a label past the
        last output would fail mid-training); warn when the head has more, or other class names."""
        from edh.heads.data_checks import check_classes, data_target

        check_classes(self, data_target(self, info, ("classification",), class_names_for=("label",)))

    def _pooled(self, features: Any) -> torch.Tensor:
        return global_pool(features, self.pool)

    def forward(self, features: Any, **context: Any) -> torch.Tensor:
        return self.fc(self.dropout(self._pooled(features)))  # (B, num_classes)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = targets.long()
        if (targets == IGNORE).all():
            return {"ce": outputs.sum() * 0.0}
        return {"ce": F.cross_entropy(outputs.float(), targets, ignore_index=IGNORE,
                                      label_smoothing=self.label_smoothing)}

    def predict(self, outputs: torch.Tensor, top_k: int | None = None, **meta: Any) -> dict[str, Any]:
        """Probabilities ``(B, num_classes)`` and the top-k ``indices``, ``scores`` and ``labels``."""
        probs = outputs.float().softmax(dim=-1)
        scores, indices = probs.topk(min(top_k or self.top_k, self.num_classes), dim=-1)
        labels = [[self.class_names[i] for i in row] for row in indices.tolist()]
        return {"probs": probs, "indices": indices, "scores": scores, "labels": labels}

    def make_metrics(self, stage: str = "val"):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix,
                                                 MulticlassPrecision, MulticlassRecall)

        n = self.num_classes
        metrics = {"acc": MulticlassAccuracy(n, average="micro", ignore_index=IGNORE)}
        if self.top_k > 1:
            metrics[f"top{self.top_k}"] = MulticlassAccuracy(n, top_k=self.top_k, average="micro", ignore_index=IGNORE)
        if stage == "test":
            metrics["precision"] = MulticlassPrecision(n, average=None, ignore_index=IGNORE)
            metrics["recall"] = MulticlassRecall(n, average=None, ignore_index=IGNORE)
            metrics["confusion"] = MulticlassConfusionMatrix(n, ignore_index=IGNORE)
        # no compute groups: torchmetrics would merge top-k with top-1 accuracy (their states agree
        # after a first batch where every top-1 guess is right) and report top-1 for both
        return MetricCollection(metrics, compute_groups=False)

    def update_metrics(self, metrics, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        metrics.update(outputs.float(), targets.long())

    def summarize(self, values: dict[str, torch.Tensor], out_dir: Path | None = None) -> tuple[dict[str, float], list[str]]:
        """The scalars (``acc``, ``top5``... and in test each class's ``precision/<class>`` and
        ``recall/<class>``), a table of the per-class ones, and the confusion matrix plot in ``out_dir``."""
        scalars = {k: float(v) for k, v in values.items() if v.numel() == 1}
        lines = []
        if "precision" in values:
            for key in ("precision", "recall"):
                scalars.update({f"{key}/{name}": value for name, value in zip(self.class_names, values[key].tolist())})
            width = max(len(n) for n in self.class_names)
            lines.append(f"{'class':<{width}}  precision  recall")
            for name, p, r in zip(self.class_names, values["precision"].tolist(), values["recall"].tolist()):
                lines.append(f"{name:<{width}}  {p:9.3f}  {r:6.3f}")
        if "confusion" in values and out_dir is not None:
            from edh.utils.plots import confusion_matrix_png

            path = confusion_matrix_png(values["confusion"], self.class_names, Path(out_dir) / "confusion_matrix.png")
            lines.append(f"confusion matrix: {path}")
        return scalars, lines

    def picture_description(self) -> str:
        return "each titled with its top class and probability"

    def write_predictions(self, prediction: dict[str, Any], images: torch.Tensor, paths: list[Path],
                          out_dir: Path) -> list[Path]:
        """One grid of the images, each titled with its top-1 label and probability."""
        from edh.utils.plots import labelled_grid

        titles = [f"{labels[0]} {scores[0]:.2f}" for labels, scores in
                  zip(prediction["labels"], prediction["scores"].tolist())]
        return [labelled_grid(images, titles, Path(out_dir) / f"{Path(paths[0]).stem}_classification.png")]

    def transfer_from(self, trained: Head) -> str | None:
        """When the classes changed, keep the rows of the classes with the same name (label-name
        mapping); the other rows start fresh. Same classes: None (every tensor is copied as it is)."""
        if not isinstance(trained, ClassificationHead) or list(trained.class_names) == self.class_names:
            return None
        index = {name: i for i, name in enumerate(trained.class_names)}
        rows = [(j, index[name]) for j, name in enumerate(self.class_names) if name in index]
        if trained.fc.in_features != self.fc.in_features:
            rows = []  # other features: no row carries over
        with torch.no_grad():
            for new_row, old_row in rows:
                self.fc.weight[new_row] = trained.fc.weight[old_row]
                self.fc.bias[new_row] = trained.fc.bias[old_row]
        kept = [self.class_names[j] for j, _ in rows]
        new = [c for c in self.class_names if c not in kept]
        return (f"classes changed; kept the weights of {len(kept)} classes with the same name "
                f"({', '.join(kept) or 'none'}); {len(new)} start fresh ({', '.join(new) or 'none'})")

    def format_prediction(self, prediction: dict[str, Any], index: int) -> str:
        pairs = zip(prediction["labels"][index], prediction["scores"][index].tolist())
        return ", ".join(f"{label} {score:.3f}" for label, score in pairs)

    def prediction_json(self, prediction: dict[str, Any], index: int, source: Path | None = None,
                        input_size: tuple[int, int] | None = None) -> dict[str, Any]:
        """``{"labels", "scores", "indices"}``: the top-k classes, most likely first."""
        return {"labels": [str(label) for label in prediction["labels"][index]],
                "scores": [round(float(s), 6) for s in prediction["scores"][index].tolist()],
                "indices": [int(i) for i in prediction["indices"][index].tolist()]}
