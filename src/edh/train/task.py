"""`EdhTask`: the Lightning training system around an edh `Model` (the model stays a plain nn.Module)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from edh.core.model import Model
from edh.core.spec import TrainSpec
from edh.train.batch import task_targets, unpack_batch


def head_losses(model: Model, outputs: dict[str, Any], targets: dict[str, Any]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each task's summed loss (`Model.tasks`: the heads, or a model without heads' decoder
    objective), and every named term (``task/term``) for logging."""
    terms: dict[str, torch.Tensor] = {}
    per_head: dict[str, torch.Tensor] = {}
    for name, head in model.tasks().items():
        parts = head.loss(outputs[name], task_targets(model, name, head, targets))
        per_head[name] = sum(parts.values())
        terms.update({f"{name}/{term}": value.detach() for term, value in parts.items()})
    return per_head, terms


def combine_losses(model: Model, outputs: dict[str, Any], targets: dict[str, Any]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The spec-weighted sum of every task's loss, and each named term."""
    per_head, terms = head_losses(model, outputs, targets)
    return sum(model.loss_weight(n) * loss for n, loss in per_head.items()), terms


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class EdhTask(L.LightningModule):
    """Trains every task of a `Model` (`Model.tasks`: its heads, or its decoder's objective).

    Args:
        model: the edh model; its roles named in ``train.freeze`` are frozen here.
        train: optimizer, learning rates per role, schedule.
    """

    def __init__(self, model: Model, train: TrainSpec) -> None:
        super().__init__()
        self.model = model
        self.train_spec = train
        from edh.train.balancing import make_balancing

        tasks = model.tasks()
        self.balancing = make_balancing(train.loss_balancing, {n: model.loss_weight(n) for n in tasks})
        if train.freeze:
            model.freeze(*train.freeze)
        self.val_metrics = nn.ModuleDict()
        self.test_metrics = nn.ModuleDict()
        for name, head in tasks.items():
            for store, stage in ((self.val_metrics, "val"), (self.test_metrics, "test")):
                metrics = head.make_metrics(stage)
                if metrics is not None:
                    store[name] = metrics

    def forward(self, inputs: Any, **context: Any) -> dict[str, Any]:
        return self.model(inputs, **context)

    def _prepare(self, inputs: Any) -> Any:
        if self.train_spec.channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets, context = unpack_batch(batch)
        outputs = self.model(self._prepare(inputs), targets=targets, **context)
        per_head, terms = head_losses(self.model, outputs, targets)
        loss = self.balancing(per_head)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"(terms: { {k: float(v) for k, v in terms.items()} }). Lower train.lr, set train.grad_clip, "
                "or check the inputs for NaN/Inf."
            )
        batch_size = _batch_size(inputs)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        if len(per_head) > 1:
            for name, value in per_head.items():
                self.log(f"train/loss_{name}", value.detach(), batch_size=batch_size)
            for name, weight in self.balancing.current().items():
                self.log(f"train/weight_{name}", weight, batch_size=batch_size)
        return loss

    def _eval_step(self, batch: Any, stage: str, store: nn.ModuleDict) -> None:
        inputs, targets, context = unpack_batch(batch)
        outputs = self.model(self._prepare(inputs), **context)
        loss, _ = combine_losses(self.model, outputs, targets)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=_batch_size(inputs), sync_dist=True)
        tasks = self.model.tasks()
        for name, metrics in store.items():
            tasks[name].update_metrics(metrics, outputs[name], task_targets(self.model, name, tasks[name], targets))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def _log_metrics(self, stage: str, store: nn.ModuleDict) -> None:
        for name, metrics in store.items():
            values = metrics.compute()
            for metric, value in values.items():
                if value.numel() == 1:
                    self.log(f"{stage}/{name}/{metric}", value.float(), prog_bar=stage == "val", sync_dist=True)
            metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def configure_optimizers(self):
        spec = self.train_spec
        groups = self.model.param_groups(spec.lr, spec.weight_decay)
        if not groups:
            raise ValueError("every parameter is frozen: nothing to train (check train.freeze)")
        balancing = [p for p in self.balancing.parameters() if p.requires_grad]
        if balancing:
            rates = spec.lr if isinstance(spec.lr, dict) else {"default": spec.lr}
            groups.append({"params": balancing, "lr": rates.get("heads", rates.get("default", max(rates.values()))),
                           "weight_decay": 0.0, "name": "loss_balancing"})
        if spec.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, momentum=spec.momentum, nesterov=True)
        elif spec.optimizer == "adam":
            optimizer = torch.optim.Adam(groups)
        else:
            optimizer = torch.optim.AdamW(groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(spec.warmup_epochs * total / max(1, spec.epochs)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total, spec.schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    return 1
