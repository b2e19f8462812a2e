"""``digit-collage``: up to four of scikit-learn's real handwritten digits on a 2x2 grid, multi-label.

A plug-in dataset: a builder registered with ``@register_dataset`` that returns a `DataBundle`;
edh imports this module through the ``edh.datasets`` entry point of ``edh-plugin-demo``. Nothing
is downloaded: the digits ship with scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from edh.core.registry import register_dataset
from edh.data.base import DataBundle, DataInfo, split_indices
from edh.data.transforms import eval_transform, train_transform

LABELS = [str(i) for i in range(10)]
CELL = 8  # the digits are 8x8


class CollageDataset(Dataset):
    """In-memory collages ``(N, 1, 16, 16)`` in [0, 1] and multi-hot targets ``(N, 10)``.

    Each item is ``(image (1, H, W) float, {"digits": (10,) float})`` after ``transform``.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform=None) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, {"digits": self.targets[index]}


def make_collages(digits: np.ndarray, labels: np.ndarray, count: int, max_digits: int,
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` collages: each puts 1..``max_digits`` digits of different classes into distinct
    cells of a 2x2 grid (the others stay black); its target marks which classes appear."""
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    present = [c for c in range(10) if len(by_class[c])]
    images = np.zeros((count, 1, 2 * CELL, 2 * CELL), dtype=np.float32)
    targets = np.zeros((count, 10), dtype=np.float32)
    for n in range(count):
        k = int(rng.integers(1, min(max_digits, len(present)) + 1))
        classes = rng.choice(present, size=k, replace=False)
        cells = rng.choice(4, size=k, replace=False)
        for c, cell in zip(classes, cells):
            row, col = divmod(int(cell), 2)
            image = digits[rng.choice(by_class[c])]
            images[n, 0, row * CELL:(row + 1) * CELL, col * CELL:(col + 1) * CELL] = image
            targets[n, c] = 1.0
    return torch.from_numpy(images), torch.from_numpy(targets)


@register_dataset("digit-collage")
def digit_collage(samples: int = 2000, max_digits: int = 3, image_size: int | None = None,
                  val_fraction: float = 0.1, test_fraction: float = 0.2, augment: str = "none",
                  seed: int = 0) -> DataBundle:
    """Up to four real handwritten digits on a 2x2 grid (16x16, 1 channel); target `digits`: which of 0-9 appear.

    The 1,797 scikit-learn digits are split into train / val / test first (by ``seed``), so no
    digit image appears in two splits; ``samples`` collages are then made, split by the same
    fractions.

    Args:
        samples: collages over all three splits.
        max_digits: the most digits on one collage (1 to 4).
        image_size: side the 16x16 collages are resized to (``None`` keeps 16x16).
        augment: ``none``, ``light`` (small random affine) or ``flip`` (light + horizontal flip).
    """
    from sklearn.datasets import load_digits

    if not 1 <= max_digits <= 4:
        raise ValueError(f"data.max_digits must be 1 to 4 (the grid has four cells), got {max_digits}")
    if samples < 3:
        raise ValueError(f"data.samples must be at least 3 (one per split), got {samples}")
    raw = load_digits()
    digits, labels = (raw.images / 16.0).astype(np.float32), raw.target
    source = split_indices(len(digits), val_fraction, test_fraction, seed)  # train, val, test digit images
    counts = [0, int(round(samples * val_fraction)), int(round(samples * test_fraction))]
    counts[0] = samples - counts[1] - counts[2]
    rng = np.random.default_rng(seed)
    parts = [make_collages(digits[index], labels[index], count, max_digits, rng)
             for index, count in zip(source, counts)]
    pixels = parts[0][0]
    mean, std = round(float(pixels.mean()), 3), round(float(pixels.std()), 3)
    size = (image_size, image_size) if image_size else (2 * CELL, 2 * CELL)
    info = DataInfo("image", 1, size, (mean,), (std,), [], {"digits": "multilabel"},
                    {"dataset": "digit-collage", "pixel_range": "0..1, white digits on black",
                     "label_names": LABELS,
                     "head_defaults": {"digits": {"num_labels": len(LABELS), "label_names": LABELS}}})
    train_tf = train_transform(info.image_size, info.mean, info.std, augment)
    eval_tf = eval_transform(info.image_size, info.mean, info.std)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = parts
    return DataBundle(CollageDataset(train_x, train_y, train_tf), CollageDataset(val_x, val_y, eval_tf),
                      CollageDataset(test_x, test_y, eval_tf), info)
