"""Reading a user's image files, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names it."""


def read_image(path: str | Path, in_channels: int) -> torch.Tensor:
    """An image file as a float tensor ``(in_channels, H, W)`` in [0, 1].

    Any PIL mode (palette, 16-bit, RGBA, grayscale) is converted to ``in_channels``
    (1: grayscale, 3: RGB, 4: RGBA); 16-bit images keep their full range.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image {path} does not exist")
    if in_channels not in _MODES:
        raise ImageReadError(f"cannot read {path} as {in_channels} channels; edh reads images as 1, 3 or 4 channels")
    try:
        with Image.open(path) as image:
            image.load()
            if image.width == 0 or image.height == 0:
                raise ImageReadError(f"image {path} has zero size ({image.width}x{image.height})")
            if image.mode in ("I;16", "I;16B", "I;16L", "I") and in_channels == 1:
                array = np.asarray(image, dtype=np.float32) / (65535.0 if image.mode.startswith("I;16") else
                                                               max(float(np.asarray(image).max()), 1.0))
                return torch.from_numpy(array).unsqueeze(0)
            if image.mode.startswith("I;16") or image.mode == "I":
                image = Image.fromarray((np.asarray(image, dtype=np.float32) / 257.0).clip(0, 255).astype(np.uint8))
            converted = image.convert(_MODES[in_channels])
            array = np.asarray(converted, dtype=np.uint8).copy()
    except Image.DecompressionBombError as error:
        raise ImageReadError(
            f"refusing to read image {path}: {error} Larger images than PIL's limit can exhaust memory (a "
            "decompression bomb); if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS or downscale it first."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}. Is it a PNG/JPEG/BMP/TIFF file, and complete?") from None
    tensor = torch.from_numpy(array).float() / 255.0
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
