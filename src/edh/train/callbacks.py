"""Callbacks that keep the run folder current: weights, metrics.csv and the curves plot; the
checkpoint callback (``last.ckpt`` at every epoch end, and every N steps); a recorder of how a fit
stopped."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from edh.utils.io import atomic_write_text
from edh.workflows.run import CKPT_FILE, CURVES_FILE, METRICS_FILE, save_weights


class RunFolderWriter(L.Callback):
    """After each validation: save ``model.safetensors``, add a row to ``metrics.csv``, redraw ``curves.png``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, float]] = []

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if value.numel() == 1 and not key.endswith("_step"):
                row[key.removesuffix("_epoch")] = round(float(value), 6)
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        save_weights(self.run_dir, pl_module.model)
        self._write_csv()
        self._plot()

    def _write_csv(self) -> None:
        keys = ["epoch", "step"] + sorted({k for r in self.rows for k in r} - {"epoch", "step"})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.run_dir / METRICS_FILE, buffer.getvalue())

    def _plot(self) -> None:
        from edh.utils.plots import curves_png

        curves_png(self.rows, self.run_dir / CURVES_FILE)


class RunCheckpoint(ModelCheckpoint):
    """``RUN/last.ckpt``, written at the end of every training epoch (after its validation), when
    training stops at ``max_steps``, and with ``every_n_train_steps`` (``train.checkpoint_every_n_steps``)
    every N optimizer steps too.

    Lightning's `ModelCheckpoint` with ``save_top_k=0`` writes ``last.ckpt`` at an epoch's end only
    alongside a top-k file (never), and with ``every_n_train_steps`` not at epoch ends at all: the last
    save would be the end of training, or up to N - 1 steps short of each epoch's end. A step save that
    falls on an epoch's last batch is left to the epoch's end (after validation: resumed from before
    it, Lightning would skip that validation). No top-k files, no ``last-v1.ckpt`` (the version counter
    is off: a folder holds one run, see `edh.workflows.run`).
    """

    CHECKPOINT_NAME_LAST = CKPT_FILE.removesuffix(".ckpt")

    def __init__(self, run_dir: Path, every_n_train_steps: int | None = None) -> None:
        super().__init__(dirpath=run_dir, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps,
                         save_on_train_epoch_end=True, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return "edh.RunCheckpoint"  # the same whatever checkpoint_every_n_steps (it may change on resume)

    def _may_save(self, trainer: L.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return not trainer.fast_dev_run and not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._every_n_train_steps >= 1 and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch's end saves, after its validation (resumed from here, Lightning would skip it)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not ModelCheckpoint's: with save_top_k=0 it saves last.ckpt at an epoch's end only when a top-k
        # file was saved at that step, that is never: last.ckpt would appear only when training ends
        if self._may_save(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self._last_global_step_saved != trainer.global_step and self._may_save(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))  # stopped by max_steps


class StopRecorder(L.Callback):
    """Remembers the exception a fit stopped with (Ctrl-C, SIGTERM, a crash) and where: Lightning turns
    Ctrl-C into ``sys.exit(1)`` and SIGTERM into ``SystemExit(None)``, this is how to tell."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None
        self.epoch = self.step = 0

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.exception, self.epoch, self.step = exception, trainer.current_epoch, trainer.global_step

