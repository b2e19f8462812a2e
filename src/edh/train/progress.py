"""Plain progress lines for output that is not a terminal (CI logs, ``edh train | tee log``, notebooks).

There Lightning's progress bar redraws rarely or not at all; `PlainProgress` prints one line every
few seconds instead::

    epoch 1/3  step 120/469  85.3 it/s  5461 samples/s  ETA 0:00:04  loss 0.4213
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, TextIO

import lightning as L

log = logging.getLogger(__name__)

PROGRESS_SECONDS_ENV = "EDH_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 5.0


def wants_plain_progress(streams: tuple[Any, ...] | None = None) -> bool:
    """Whether progress should be plain lines: stdout or stderr (where a bar draws) is not a terminal."""
    streams = (sys.stdout, sys.stderr) if streams is None else streams
    for stream in streams:
        isatty = getattr(stream, "isatty", None)
        try:
            if isatty is None or not isatty():
                return True
        except (ValueError, OSError):  # a closed stream
            return True
    return False


def progress_interval() -> float:
    """Seconds between two lines: ``EDH_PROGRESS_SECONDS`` (0: a line after every batch), else 5 (also,
    with a warning, when the variable is not a number of seconds)."""
    raw = os.environ.get(PROGRESS_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_PROGRESS_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        log.warning("%s=%r is not a number of seconds (e.g. 5; 0: a line after every batch): using %g",
                    PROGRESS_SECONDS_ENV, raw, DEFAULT_PROGRESS_SECONDS)
        return DEFAULT_PROGRESS_SECONDS
    return value


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class PlainProgress(L.Callback):
    """Print ``epoch e/E  step s/S  it/s  samples/s  ETA  loss`` every ``interval`` seconds of training
    (and after an epoch's last batch), on ``stream`` (stdout by default), from rank 0 only.

    Args:
        interval: seconds between two lines; ``None`` reads ``EDH_PROGRESS_SECONDS`` (default 5).
        stream: where the lines go; ``None`` is ``sys.stdout`` at the time of printing.
    """

    def __init__(self, interval: float | None = None, stream: TextIO | None = None) -> None:
        self.interval = progress_interval() if interval is None else float(interval)
        self.stream = stream
        self._last_print = 0.0
        self._epoch_start = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_print = time.monotonic()
        self._samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += _batch_size(batch)
        now = time.monotonic()
        last = batch_idx + 1 >= _steps_in_epoch(trainer)
        if not trainer.is_global_zero or (now - self._last_print < self.interval and not last):
            return
        self._last_print = now
        print(self.line(trainer, batch_idx, now - self._epoch_start, _loss(outputs, trainer)),
              file=self.stream or sys.stdout, flush=True)

    def line(self, trainer: L.Trainer, batch_idx: int, elapsed: float, loss: float | None) -> str:
        """The progress line after batch ``batch_idx`` of the current epoch, ``elapsed`` seconds into it."""
        done, total = batch_idx + 1, _steps_in_epoch(trainer)
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        parts = [f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else ""),
                 f"step {done}" + (f"/{int(total)}" if math.isfinite(total) else "")]
        if elapsed > 0:
            parts.append(f"{done / elapsed:.1f} it/s")
            if self._samples:
                parts.append(f"{self._samples / elapsed:.0f} samples/s")
            if math.isfinite(total):
                parts.append(f"ETA {format_duration((total - done) * elapsed / done)}")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        return "  ".join(parts)


def _steps_in_epoch(trainer: L.Trainer) -> float:
    total = trainer.num_training_batches
    return float(total) if total is not None else math.inf


def _loss(outputs: Any, trainer: L.Trainer) -> float | None:
    value = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if value is None:
        value = trainer.callback_metrics.get("train/loss")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _batch_size(batch: Any) -> int:
    """The number of samples in ``batch``: the first dimension of its first tensor (0 if none)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 0
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _batch_size(item)
            if size:
                return size
    return 0
