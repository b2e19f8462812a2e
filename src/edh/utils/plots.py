"""Pictures edh writes: confusion matrices, training curves, image grids (and, per family, overlays and boxes)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from edh.utils.io import atomic_write


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def confusion_matrix_png(matrix: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = matrix.cpu().float()
    rates = counts / counts.sum(1, keepdim=True).clamp_min(1)
    n = len(class_names)
    fig, axis = plt.subplots(figsize=(1.0 + 0.55 * n, 1.0 + 0.5 * n))
    axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(n), class_names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                axis.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                          color="white" if rates[i, j] > 0.5 else "black")
    return save_figure(fig, path)


def display_image(image: torch.Tensor):
    """A normalised ``(C, H, W)`` tensor as an ``(H, W[, C])`` array in [0, 1] for imshow."""
    image = image.detach().float().cpu()
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-6)
    if image.shape[0] == 1:
        return image[0].numpy()
    return image[:3].permute(1, 2, 0).numpy()


def labelled_grid(images: torch.Tensor, titles: list[str], path: Path, columns: int = 8) -> Path:
    """A grid of images ``(N, C, H, W)`` with a title under each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    columns = min(columns, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        shown = display_image(image)
        axis.imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
        axis.set_title(title, fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def to_pixels(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised images ``(N, C, H, W)`` -> pixels in [0, 1] (clamped), on the CPU."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1)


def image_rows_png(rows: list[tuple[str, torch.Tensor]], mean: tuple[float, ...], std: tuple[float, ...], path: Path,
                   columns: int = 8) -> Path:
    """Labelled rows of normalised images ``(N, C, H, W)`` as one PNG grid; return ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []  # (label, chunk of at most `columns` images)
    for label, images in rows:
        pixels = to_pixels(images, mean, std)
        for start in range(0, len(pixels), columns):
            lines.append((label if start == 0 else "", pixels[start:start + columns]))
    fig, axes = plt.subplots(len(lines), columns, figsize=(1.1 * columns + 1.0, 1.1 * len(lines)), squeeze=False)
    for (label, pixels), axis_row in zip(lines, axes):
        for index, axis in enumerate(axis_row):
            axis.axis("off")
            if index < len(pixels):
                image = pixels[index].permute(1, 2, 0).numpy()
                axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        axis_row[0].set_title(label, fontsize=8, loc="left")
    return save_figure(fig, Path(path))


def curve_panels(rows: list[dict[str, float]], most: int = 5) -> list[list[str]]:
    """The keys of each training-curves panel: the losses (``train/loss``, ``val/loss``) together, then
    one panel for each of the first ``most`` other validation metrics that have a value: one that is
    NaN or -1 (torchmetrics' "undefined", e.g. ``map_large`` without large objects) at every epoch has none."""
    keys = sorted({k for r in rows for k in r if k.startswith(("train/", "val/"))})
    losses = [k for k in keys if k in ("train/loss", "val/loss")]
    defined = {k for r in rows for k, v in r.items() if not math.isnan(v) and v != -1}
    others = [k for k in keys if k.startswith("val/") and k not in losses and k in defined]
    return [panel for panel in [losses] + [[k] for k in others[:most]] if panel]


def curves_figure(rows: list[dict[str, float]], columns: int = 3):
    """The training curves of ``metrics.csv`` ``rows`` (one per validated epoch) as a matplotlib figure:
    a panel per `curve_panels` entry, x = epoch (whole numbers), up to ``columns`` panels a row.

    With a single epoch there is no curve: each panel shows a bar per value with the value written
    on it, and its title says "one epoch"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = curve_panels(rows) or [[]]
    epochs = sorted({r["epoch"] for r in rows if "epoch" in r})
    one_epoch = len(epochs) == 1
    columns = min(columns, len(panels))
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for axis, panel in zip(axes.flat, panels):
        title = "loss" if len(panel) > 1 else ", ".join(panel) or "no validation metrics yet"
        if one_epoch:
            _one_epoch_bars(axis, panel, rows, epochs[0])
            title += "\none epoch: its values, not a curve"
        else:
            for key in panel:
                points = [(r["epoch"], r[key]) for r in rows if key in r and not math.isnan(r[key])]
                if points:
                    axis.plot(*zip(*points), marker="o", label=key)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_xlabel("epoch")
            if panel:
                axis.legend(fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3, axis="y" if one_epoch else "both")
    fig.tight_layout()
    return fig


def _one_epoch_bars(axis, panel: list[str], rows: list[dict[str, float]], epoch: int) -> None:
    """A bar per key of ``panel`` at ``epoch``, its value written above it."""
    values = [(key, r[key]) for key in panel for r in rows
              if r.get("epoch") == epoch and key in r and not math.isnan(r[key])]
    bars = axis.bar([key for key, _ in values], [value for _, value in values], width=0.5,
                    color=[f"C{i}" for i in range(len(values))])
    axis.bar_label(bars, labels=[f"{value:.4g}" for _, value in values], padding=3, fontsize=10)
    pad = 0.5 if len(values) == 1 else 0.2  # a lone bar a quarter of the panel wide, not all of it
    axis.set_xlim(-0.5 - pad, len(values) - 0.5 + pad)
    axis.margins(y=0.2)
    heights = [value for _, value in values]
    if heights and min(heights) >= 0:  # bars stand on 0; all zero: an axis up to 1
        axis.set_ylim(0, 1.2 * max(heights) if max(heights) > 0 else 1)


def curves_png(rows: list[dict[str, float]], path: Path) -> Path:
    """`curves_figure` of ``rows`` written to ``path`` as PNG (atomically); return ``path``."""
    return save_figure(curves_figure(rows), Path(path))
