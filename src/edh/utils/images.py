"""Opening image files upright: the EXIF orientation a phone writes is applied (read, size, drawings)."""

from __future__ import annotations

from pathlib import Path


def open_upright(path: str | Path):
    """``PIL.Image.open(path)``, loaded, with its EXIF orientation applied (a new image; the file is closed).

    Errors are PIL's; `read_image` turns them into an `ImageReadError` naming the file.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
    return upright if upright is not None else image


def upright_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file as `read_image` gives it (EXIF orientation applied), from its header."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block: PIL reads the pixels as stored
            orientation = 1
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def png_base64(pixels) -> str:
    """A uint8 array ``(H, W)`` (gray or class indices) or ``(H, W, 3|4)`` as a base64 PNG string (for JSON)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
