"""`EdhTask`: the Lightning training system around an edh `Model` (the model stays a plain nn.Module)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from edh.model import Model
from edh.spec import TrainSpec
from edh.train.batch import unpack_batch


def combine_losses(model: Model, outputs: dict[str, Any], targets: dict[str, Any],
                   reconstruction: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of every head's loss terms; returns the total and each named term.

    A model without heads is trained with ``reconstruction(decoder_output, targets)``.
    """
    terms: dict[str, torch.Tensor] = {}
    total = None
    if not model.heads:
        if reconstruction is None:
            raise ValueError("a model without heads needs a reconstruction loss (train.reconstruction)")
        parts = reconstruction(outputs["decoder"], targets)
        for name, value in parts.items():
            terms[f"decoder/{name}"] = value
            total = value if total is None else total + value
        return total, terms
    for name, head in model.heads.items():
        spec = model.head_specs[name]
        key = spec.target or name
        if key not in targets:
            raise KeyError(f"head {name!r} learns from target {key!r}, but the batch only has targets "
                           f"{sorted(targets)}; set heads.{name}.target to one of them")
        parts = head.loss(outputs[name], targets[key])
        head_total = sum(parts.values())
        for term, value in parts.items():
            terms[f"{name}/{term}"] = value.detach()
        total = spec.weight * head_total if total is None else total + spec.weight * head_total
    return total, terms


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
    """Trains every head of a `Model` (or its decoder, for a model without heads).

    Args:
        model: the edh model; its roles named in ``train.freeze`` are frozen here.
        train: optimizer, learning rates per role, schedule.
        reconstruction: loss for models without heads, ``(decoder_output, targets) -> {name: loss}``.
    """

    def __init__(self, model: Model, train: TrainSpec, reconstruction: Any = None) -> None:
        super().__init__()
        self.model = model
        self.train_spec = train
        self.reconstruction = reconstruction
        if train.freeze:
            model.freeze(*train.freeze)
        self.val_metrics = nn.ModuleDict()
        self.test_metrics = nn.ModuleDict()
        for name, head in model.heads.items():
            for store, stage in ((self.val_metrics, "val"), (self.test_metrics, "test")):
                metrics = head.make_metrics(stage) if _takes_stage(head) else head.make_metrics()
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
        if self.reconstruction is not None:  # a model without heads reconstructs its inputs
            targets = {"inputs": inputs, **targets}
        outputs = self.model(self._prepare(inputs), targets=targets, **context)
        loss, terms = combine_losses(self.model, outputs, targets, self.reconstruction)
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
        return loss

    def _eval_step(self, batch: Any, stage: str, store: nn.ModuleDict) -> None:
        inputs, targets, context = unpack_batch(batch)
        if self.reconstruction is not None:
            targets = {"inputs": inputs, **targets}
        outputs = self.model(self._prepare(inputs), **context)
        loss, _ = combine_losses(self.model, outputs, targets, self.reconstruction)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=_batch_size(inputs), sync_dist=True)
        for name, metrics in store.items():
            key = self.model.head_specs[name].target or name
            self.model.heads[name].update_metrics(metrics, outputs[name], targets[key])
        if not self.model.heads and hasattr(self.reconstruction, "update_metrics"):
            self.reconstruction.update_metrics(outputs["decoder"], targets)

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
        if not self.model.heads and hasattr(self.reconstruction, "compute_metrics"):
            for metric, value in self.reconstruction.compute_metrics().items():
                self.log(f"{stage}/decoder/{metric}", value, prog_bar=stage == "val", sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def configure_optimizers(self):
        spec = self.train_spec
        groups = self.model.param_groups(spec.lr, spec.weight_decay)
        if not groups:
            raise ValueError("every parameter is frozen: nothing to train (check train.freeze)")
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


def _takes_stage(head: nn.Module) -> bool:
    import inspect

    return "stage" in inspect.signature(head.make_metrics).parameters


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    return 1
