"""Callbacks that keep the run folder current: weights, metrics.csv and the curves plot."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import lightning as L

from edh.utils.io import atomic_write, atomic_write_text
from edh.workflows.run import CURVES_FILE, METRICS_FILE, save_weights


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
        write_curves(self.rows, self.run_dir / CURVES_FILE)


def write_curves(rows: list[dict[str, float]], path: Path) -> None:
    """One panel for the losses, one for each other validation metric, x = epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k in r if k.startswith(("train/", "val/"))})
    losses = [k for k in keys if k in ("train/loss", "val/loss")]
    others = [k for k in keys if k.startswith("val/") and k not in losses]
    panels = [losses] + [[k] for k in others[:5]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for key in panel:
            points = [(r["epoch"], r[key]) for r in rows if key in r and not math.isnan(r[key])]
            if points:
                axis.plot(*zip(*points), marker="o", label=key)
        axis.set_xlabel("epoch")
        axis.set_title(", ".join(panel) if len(panel) == 1 else "loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
