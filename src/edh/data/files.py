"""Reading a user's image files, with errors that name the file.

How pixels become numbers (``read_image``; recorded in a run's data fingerprint as `READER`):

- The EXIF ``Orientation`` tag is applied first (``PIL.ImageOps.exif_transpose``): a phone photo
  is read upright, as every image viewer shows it; sizes (and a mask's size check) are upright sizes.
- 8-bit modes (L, P, RGB, RGBA, LA, CMYK, 1...): value / 255, converted to ``in_channels``.
- 16-bit integer modes (``I;16``, ``I;16B``, ``I;16L``: 16-bit PNG / TIFF): value / 65535.
- 32-bit integer mode ``I``: read as 16-bit (value / 65535) when every value lies in 0..65535;
  other values are refused (``ImageReadError`` naming the file and the range found).
- 32-bit float mode ``F`` (float TIFF): used as it is when every value lies in [0, 1]; NaN / Inf
  or values outside [0, 1] are refused with the range found (never clipped to black or white).
- A one-channel high-bit image read as 3 (4) channels repeats its gray value (with an opaque alpha).

Scaling never depends on an image's own content: two files with the same pixel values read the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edh.core.errors import DataItemError
from edh.utils.images import open_upright, upright_size  # noqa: F401 - read_image's, and the loaders'

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_HIGH_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I", "F")
READER = "exif-upright; 8-bit /255; 16-bit and 0..65535 int /65535; float as is in [0, 1]"
"""The pixel rule above, as recorded in a run's data fingerprint (a change is reported by ``edh eval``)."""


class ImageReadError(DataItemError):
    """An image file that cannot be read; the message names it (and survives a DataLoader worker)."""


def _high_bit_gray(image, path: Path) -> np.ndarray:
    """A one-channel 16-bit, 32-bit integer or float image as ``(H, W)`` float32 in [0, 1] (rule above)."""
    array = np.asarray(image)
    if image.mode == "F":
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise ImageReadError(f"float image {path} holds {bad} NaN / Inf pixel(s); edh cannot read them as "
                                 "intensities. Replace them (e.g. with 0) or save the image as 8- or 16-bit")
        low, high = float(array.min()), float(array.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ImageReadError(
                f"float image {path} (mode F) holds values in [{low:g}, {high:g}]; edh reads float images as "
                "intensities in [0, 1] and will not guess another scale. Rescale it to [0, 1] (e.g. divide by "
                "255, 65535 or its sensor's maximum), or save it as an 8- or 16-bit image")
        return array.clip(0.0, 1.0)
    array = array.astype(np.int64)
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high > 65535:
        raise ImageReadError(
            f"integer image {path} (mode {image.mode}) holds values {low}..{high}; edh reads integer images as "
            "16-bit (0..65535, value / 65535). Rescale it to 0..65535 (or save it as an 8-bit image)")
    return (array.astype(np.float32) / 65535.0)


def _expand(gray: np.ndarray, in_channels: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32)).unsqueeze(0)
    if in_channels == 1:
        return tensor
    planes = [tensor] * 3 + ([torch.ones_like(tensor)] if in_channels == 4 else [])
    return torch.cat(planes)


def read_image(path: str | Path, in_channels: int) -> torch.Tensor:
    """An image file as a float tensor ``(in_channels, H, W)`` in [0, 1], upright (see the module rule).

    Any PIL mode (palette, 16-bit, 32-bit integer or float, RGBA, grayscale, CMYK) is converted to
    ``in_channels`` (1: grayscale, 3: RGB, 4: RGBA); 16-bit images keep their full range.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image {path} does not exist")
    if in_channels not in _MODES:
        raise ImageReadError(f"cannot read {path} as {in_channels} channels; edh reads images as 1, 3 or 4 channels")
    try:
        image = open_upright(path)
        if image.width == 0 or image.height == 0:
            raise ImageReadError(f"image {path} has zero size ({image.width}x{image.height})")
        if image.mode in _HIGH_BIT:
            return _expand(_high_bit_gray(image, path), in_channels)
        converted = image.convert(_MODES[in_channels])
        array = np.asarray(converted, dtype=np.uint8).copy()
    except Image.DecompressionBombError as error:
        raise ImageReadError(
            f"refusing to read image {path}: {error} Larger images than PIL's limit can exhaust memory (a "
            "decompression bomb); if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS or downscale it first."
        ) from None
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}. Is it a PNG/JPEG/BMP/TIFF file, and complete?") from None
    tensor = torch.from_numpy(array).float() / 255.0
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
