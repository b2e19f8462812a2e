"""Image transforms (torchvision.transforms.v2) shared by the image datasets and predict."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2


def eval_transform(image_size: Sequence[int] | None, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize (when ``image_size`` is given) and normalise a float image in [0, 1]."""
    steps: list = []
    if image_size:
        steps.append(v2.Resize(tuple(image_size), antialias=True))
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def train_transform(image_size: Sequence[int] | None, mean: Sequence[float], std: Sequence[float],
                    augment: str = "none", crop_padding: int = 2) -> v2.Compose:
    """``eval_transform`` plus augmentation.

    ``augment``: ``none``; ``light`` (small random affine: +-10 degrees, 10 % shift, 0.9-1.1 scale);
    ``flip`` (light + horizontal flip, for natural images and clothes).
    """
    if augment not in ("none", "light", "flip"):
        raise ValueError(f"augment must be none, light or flip, got {augment!r}")
    steps: list = []
    if image_size:
        steps.append(v2.Resize(tuple(image_size), antialias=True))
    if augment in ("light", "flip"):
        steps.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    if augment == "flip":
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def to_float_image(image: torch.Tensor) -> torch.Tensor:
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
