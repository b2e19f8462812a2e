"""`EdhTask`: the Lightning training system around an edh `Model` (the model stays a plain nn.Module)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from edh.core.model import Model
from edh.core.spec import TrainSpec
from edh.train.batch import unpack_batch


def head_losses(model: Model, outputs: dict[str, Any], targets: dict[str, Any],
                reconstruction: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each head's summed loss, and every named term (``head/term``) for logging.

    A model without heads is trained with ``reconstruction(decoder_output, targets)`` under the name
    ``decoder``.
    """
    terms: dict[str, torch.Tensor] = {}
    per_head: dict[str, torch.Tensor] = {}
    if not model.heads:
        if reconstruction is None:
            raise ValueError("a model without heads needs a reconstruction loss (train.reconstruction)")
        parts = reconstruction(outputs["decoder"], targets)
        terms.update({f"decoder/{name}": value for name, value in parts.items()})
        per_head["decoder"] = sum(parts.values())
        return per_head, terms
    for name, head in model.heads.items():
        key = model.head_specs[name].target or name
        try:
            head_targets = head.select_targets(targets, key)
        except KeyError as missing:
            raise KeyError(f"head {name!r} learns from target {missing.args[0]!r}, but the batch only has targets "
                           f"{sorted(targets)}; set heads.{name}.target to one of them") from None
        parts = head.loss(outputs[name], head_targets)
        per_head[name] = sum(parts.values())
        terms.update({f"{name}/{term}": value.detach() for term, value in parts.items()})
    return per_head, terms


def combine_losses(model: Model, outputs: dict[str, Any], targets: dict[str, Any],
                   reconstruction: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The spec-weighted sum of every head's loss, and each named term."""
    per_head, terms = head_losses(model, outputs, targets, reconstruction)
    weights = {name: (model.head_specs[name].weight if name in model.head_specs else 1.0) for name in per_head}
    return sum(weights[n] * loss for n, loss in per_head.items()), terms


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
        from edh.train.balancing import make_balancing

        names = list(model.heads) or ["decoder"]
        self.balancing = make_balancing(train.loss_balancing,
                                        {n: (model.head_specs[n].weight if n in model.head_specs else 1.0) for n in names})
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
        per_head, terms = head_losses(self.model, outputs, targets, self.reconstruction)
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
        if self.reconstruction is not None:
            targets = {"inputs": inputs, **targets}
        outputs = self.model(self._prepare(inputs), **context)
        loss, _ = combine_losses(self.model, outputs, targets, self.reconstruction)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=_batch_size(inputs), sync_dist=True)
        for name, metrics in store.items():
            key = self.model.head_specs[name].target or name
            head = self.model.heads[name]
            head.update_metrics(metrics, outputs[name], head.select_targets(targets, key))
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


def _takes_stage(head: nn.Module) -> bool:
    import inspect

    return "stage" in inspect.signature(head.make_metrics).parameters


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    return 1
