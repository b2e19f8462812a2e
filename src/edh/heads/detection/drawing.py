"""Pictures of detections: boxes, class names, scores (and instance masks) drawn on the original image file."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch

from edh.utils.images import open_upright, upright_size


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file as the model read it (EXIF orientation applied; only its header is read)."""
    return upright_size(path)


def scale_boxes(boxes: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """Boxes ``(N, 4)`` xyxy of an image of ``from_size`` ``(H, W)`` moved onto one of ``to_size``."""
    if tuple(from_size) == tuple(to_size):
        return boxes
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)


def picture_of(image: torch.Tensor) -> torch.Tensor:
    """A model input ``(C, H, W)`` (normalised) as a viewable uint8 RGB ``(3, H, W)``, stretched to 0..255."""
    image = image.detach().float().cpu()
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    low, high = image.amin(), image.amax()
    return ((image - low) / (high - low).clamp_min(1e-6) * 255).round().byte()


PICTURE_MIN_SCORE = 0.3
"""Pictures show the detections scoring at least this: heads keep lower scores for mAP (``fcos`` 0.05,
``yolo`` 0.001), which would bury a picture in boxes."""
PICTURE_MIN_SIDE = 384  # smaller images are enlarged (whole factors, nearest) so that boxes and labels can be read


def picture_min_score(score_thresh: float) -> float:
    """The lowest score a picture of a head's detections shows: `PICTURE_MIN_SCORE`, or the head's own
    ``score_thresh`` where that is higher (the head returns no lower scores, the banner says what was kept)."""
    return max(PICTURE_MIN_SCORE, float(score_thresh))


def picture_note(drawn: int, found: int, min_score: float) -> str:
    """The banner at the top of a detection picture: ``"boxes scoring >= 0.30: 3 of 57"``."""
    return f"boxes scoring >= {min_score:.2f}: {drawn} of {found}"


def enlargement(size: tuple[int, int]) -> int:
    """The whole factor that brings an image of ``size`` ``(H, W)`` to a short side of at least
    `PICTURE_MIN_SIDE` (1 for an image that is large enough)."""
    return max(1, -(-PICTURE_MIN_SIDE // max(1, min(size))))


@functools.cache
def _font_file() -> str | None:
    """A TrueType font file for the labels (matplotlib's DejaVu Sans), or None (PIL's small built-in font)."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # noqa: BLE001 - labels then use PIL's built-in font
        return None


def draw_detections(path: str | Path, detections: dict[str, torch.Tensor], input_size: tuple[int, int],
                    name_of: Callable[[int], str], out: Path, image: torch.Tensor | None = None,
                    masks: torch.Tensor | None = None, min_score: float = PICTURE_MIN_SCORE) -> Path:
    """The image at ``path`` with ``detections`` (found on the model input of ``input_size``) drawn; a PNG.

    Where ``path`` is not a file, the model input ``image`` ``(C, H, W)`` is drawn on instead.
    ``masks``: ``(D, h, w)`` bool, one per detection at the picture's resolution (instance
    segmentation), filled in its class colour under the boxes (resized, nearest, if another size).
    Only detections scoring ``>= min_score`` are drawn (a head passes `picture_min_score` of its
    ``score_thresh``), and a banner on a black strip above the image says so (`picture_note`: "boxes
    scoring >= 0.30: 3 of 57"). An image with a short side under `PICTURE_MIN_SIDE` is enlarged by the
    whole factor `enlargement` (nearest): the PNG is that many times the image's width, and as many
    times its height plus the strip."""
    import numpy as np
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from edh.heads.segmentation import class_colours
    from edh.utils.io import atomic_write

    if Path(path).is_file() or image is None:
        original = open_upright(path)  # EXIF orientation applied, as the model read it
        picture = torch.from_numpy(np.asarray(original.convert("RGB")).copy()).permute(2, 0, 1)
    else:
        picture = picture_of(image)
    factor = enlargement(tuple(picture.shape[-2:]))
    picture = picture.repeat_interleave(factor, 1).repeat_interleave(factor, 2)  # (3, H * factor, W * factor)
    size = tuple(picture.shape[-2:])
    scores = detections["scores"].cpu()
    kept = scores >= min_score
    boxes = scale_boxes(detections["boxes"].float().cpu()[kept], input_size, size)
    labels = detections["labels"].cpu()[kept].tolist()
    colours = class_colours(max(labels, default=0) + 1)
    colors = [tuple(int(255 * c) for c in colours[label]) for label in labels]
    if masks is not None and kept.any():
        masks = masks.cpu()[kept]
        if tuple(masks.shape[-2:]) != size:
            masks = torch.nn.functional.interpolate(masks[:, None].float(), size=size)[:, 0] > 0.5
        picture = draw_segmentation_masks(picture, masks.bool(), alpha=0.5, colors=colors)
    side = min(size)
    font_size = max(10, side // 28)
    font = _font_file()
    if len(boxes):
        text = [f"{name_of(int(label))} {score:.2f}" for label, score in zip(labels, scores[kept].tolist())]
        picture = draw_bounding_boxes(picture, boxes, labels=text, width=max(2, side // 128), colors=colors,
                                      font=font, font_size=font_size if font else None, fill_labels=True)
    drawn = _with_banner(picture, picture_note(len(labels), len(scores), min_score), font, font_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: drawn.save(f, format="PNG"))
    return out


def _with_banner(picture: torch.Tensor, note: str, font: str | None, font_size: int):
    """The uint8 ``picture`` ``(3, H, W)`` as a PIL image under a black strip with ``note`` written on it."""
    from PIL import Image, ImageDraw, ImageFont

    banner_font = ImageFont.truetype(font, font_size) if font else ImageFont.load_default()
    strip = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((4, 4), note, font=banner_font)[3] + 4
    drawn = Image.new("RGB", (picture.shape[-1], picture.shape[-2] + strip))
    drawn.paste(Image.fromarray(picture.permute(1, 2, 0).numpy()), (0, strip))
    ImageDraw.Draw(drawn).text((4, 4), note, fill=(255, 255, 0), font=banner_font)
    return drawn
