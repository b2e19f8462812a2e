"""``multilabel``: multi-label classification, one independent yes / no per label (sigmoid + BCE).

A plug-in head: it subclasses `edh.heads.base.Head` and registers itself with ``@register_head``;
edh imports this module through the ``edh.heads`` entry point of ``edh-plugin-demo``. Train, eval,
predict, export, describe and diagram call only the contract methods below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.core.features import FeatureSpec
from edh.core.registry import register_head
from edh.heads.base import Head
from edh.layers.pooling import POOLS, global_pool

IGNORE = -1  # a target entry of -1 is unknown (partial labels): left out of the loss and the metrics


@register_head("multilabel")
class MultilabelHead(Head):
    """Global pooling + dropout + linear to one sigmoid score per label (several labels per sample).

    Targets are multi-hot ``(B, num_labels)`` in {0, 1}; an entry of ``-1`` is unknown and left out
    of the loss and the metrics. A label is predicted when its probability reaches ``threshold``.

    Args:
        num_labels: number of labels (filled from the data's ``head_defaults`` when left out).
        label_names: a name per label (shown by predict and eval; used to keep rows when labels change).
        pool: ``avg``, ``max`` or ``avgmax``.
        dropout: dropout before the linear layer.
        threshold: probability at which a label counts as present (predictions and metrics).
        pos_weight: weight of the positive term of the BCE (above 1 for rare labels).

    Shapes: features -> logits ``(B, num_labels)``.
    """

    accepts = ("pyramid", "sequence", "vector")
    task = "multilabel"
    function = "global pooling + linear to one sigmoid score per label"
    reads_level = -1  # the deepest pyramid level
    export_postprocess = "batched"  # the sigmoid traces with a dynamic batch axis

    def __init__(self, in_spec: FeatureSpec, num_labels: int, label_names: list[str] | None = None,
                 pool: str = "avg", dropout: float = 0.0, threshold: float = 0.5, pos_weight: float = 1.0) -> None:
        super().__init__(in_spec)
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}")
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(f"label_names has {len(label_names)} names but num_labels is {num_labels}")
        if pool not in POOLS:
            raise ValueError(f"pool must be {', '.join(POOLS)}, got {pool!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        if pos_weight <= 0:
            raise ValueError(f"pos_weight must be positive, got {pos_weight}")
        self.num_labels, self.pool, self.threshold, self.pos_weight = num_labels, pool, threshold, pos_weight
        self.label_names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_spec.width, num_labels)

    # ---- training ---------------------------------------------------------------------------------
    def forward(self, features: Any, **context: Any) -> torch.Tensor:
        return self.fc(self.dropout(global_pool(features, self.pool)))  # (B, num_labels)

    def _targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = torch.as_tensor(targets, device=outputs.device).float()
        if targets.shape != outputs.shape:
            raise ValueError(f"head multilabel expects multi-hot targets shaped {tuple(outputs.shape)} "
                             f"(batch, num_labels={self.num_labels}), got {tuple(targets.shape)}")
        return targets

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = self._targets(outputs, targets)
        known = targets != IGNORE
        if not known.any():
            return {"bce": outputs.sum() * 0.0}
        weight = torch.tensor(self.pos_weight, device=outputs.device)
        bce = F.binary_cross_entropy_with_logits(outputs.float()[known], targets[known], pos_weight=weight)
        return {"bce": bce}

    # ---- metrics ----------------------------------------------------------------------------------
    def make_metrics(self, stage: str = "val"):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (MultilabelExactMatch, MultilabelF1Score, MultilabelPrecision,
                                                 MultilabelRecall)

        n, t = self.num_labels, self.threshold
        metrics = {"f1": MultilabelF1Score(n, threshold=t, average="macro", ignore_index=IGNORE),
                   "exact_match": MultilabelExactMatch(n, threshold=t, ignore_index=IGNORE)}
        if stage == "test":
            metrics["f1_per_label"] = MultilabelF1Score(n, threshold=t, average=None, ignore_index=IGNORE)
            metrics["precision"] = MultilabelPrecision(n, threshold=t, average=None, ignore_index=IGNORE)
            metrics["recall"] = MultilabelRecall(n, threshold=t, average=None, ignore_index=IGNORE)
        return MetricCollection(metrics)

    def update_metrics(self, metrics, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        metrics.update(outputs.float().sigmoid(), self._targets(outputs, targets).long())

    def summarize(self, values: dict[str, torch.Tensor],
                  out_dir: Path | None = None) -> tuple[dict[str, float], list[str]]:
        """Macro F1 and exact match as scalars; at test time a per-label F1 / precision / recall table."""
        scalars = {k: float(v) for k, v in values.items() if v.numel() == 1}
        lines: list[str] = []
        if "f1_per_label" in values:
            width = max(5, *(len(n) for n in self.label_names))
            lines.append(f"{'label':<{width}}  f1     precision  recall")
            for name, f1, p, r in zip(self.label_names, values["f1_per_label"].tolist(),
                                      values["precision"].tolist(), values["recall"].tolist()):
                lines.append(f"{name:<{width}}  {f1:5.3f}  {p:9.3f}  {r:6.3f}")
        return scalars, lines

    # ---- prediction -------------------------------------------------------------------------------
    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities ``(B, num_labels)``: the traceable part of ``predict``."""
        return outputs.float().sigmoid()

    def from_postprocessed(self, result: torch.Tensor, top_k: int | None = None, **meta: Any) -> dict[str, Any]:
        """``probs (B, num_labels)``, and per sample the ``labels`` at or above ``threshold`` with their
        ``scores``, most probable first (at most ``top_k`` of them when given)."""
        probs = torch.as_tensor(result).float()
        labels, scores = [], []
        for row in probs.tolist():
            present = sorted((i for i, p in enumerate(row) if p >= self.threshold), key=lambda i: -row[i])
            present = present[:top_k] if top_k else present
            labels.append([self.label_names[i] for i in present])
            scores.append([row[i] for i in present])
        return {"probs": probs, "labels": labels, "scores": scores}

    def align_predictions(self, reference: dict[str, Any], other: dict[str, Any]) -> tuple[Any, Any]:
        """Eager and exported predictions compare by their probabilities (the labels follow from them)."""
        if tuple(reference["probs"].shape) != tuple(other["probs"].shape):
            raise ValueError(f"probabilities shaped {tuple(reference['probs'].shape)} and "
                             f"{tuple(other['probs'].shape)}")
        return {"probs": reference["probs"]}, {"probs": other["probs"]}

    def format_prediction(self, prediction: dict[str, Any], index: int) -> str:
        labels, scores = prediction["labels"][index], prediction["scores"][index]
        if labels:
            return ", ".join(f"{label} {score:.3f}" for label, score in zip(labels, scores))
        row = prediction["probs"][index]
        best = int(row.argmax())
        return f"(none at threshold {self.threshold:g}; most probable {self.label_names[best]} {float(row[best]):.3f})"

    def write_predictions(self, prediction: dict[str, Any], images: torch.Tensor, paths: list[Path],
                          out_dir: Path) -> list[Path]:
        """One grid of the images, each titled with its predicted labels."""
        from edh.utils.plots import labelled_grid

        titles = [" ".join(labels) or "-" for labels in prediction["labels"]]
        return [labelled_grid(images, titles, Path(out_dir) / f"{Path(paths[0]).stem}_multilabel.png")]

    def prediction_records(self, prediction: dict[str, Any], paths: list[Path], input_size: tuple[int, int],
                           info: Any = None) -> list[dict[str, Any]]:
        """Per image: its file, the predicted labels and every label's probability."""
        return [{"file": str(path), "labels": labels,
                 "probs": {name: round(p, 6) for name, p in zip(self.label_names, row)}}
                for path, labels, row in zip(paths, prediction["labels"], prediction["probs"].tolist())]

    # ---- head surgery -----------------------------------------------------------------------------
    def transfer_from(self, trained: Head) -> str | None:
        """When the label names changed, keep each trained row under its name (new labels start fresh)."""
        old = getattr(trained, "label_names", None)
        if (not isinstance(trained, MultilabelHead) or old == self.label_names
                or trained.fc.in_features != self.fc.in_features):
            return None  # same labels (or another kind of head): copying tensors by name and shape is right
        index = {name: i for i, name in enumerate(old)}
        kept = [(j, index[name]) for j, name in enumerate(self.label_names) if name in index]
        with torch.no_grad():
            for j, i in kept:
                self.fc.weight[j] = trained.fc.weight[i]
                self.fc.bias[j] = trained.fc.bias[i]
        new = [n for n in self.label_names if n not in index]
        return f"{len(kept)} of {self.num_labels} labels kept by name" + (f"; new: {', '.join(new)}" if new else "")
