"""Pictures edh writes: confusion matrices (and, per family, overlays and boxes)."""

from __future__ import annotations

import io
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
