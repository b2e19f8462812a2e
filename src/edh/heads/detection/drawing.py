"""Pictures of detections: boxes, class names, scores (and instance masks) drawn on the original image file."""

from __future__ import annotations

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


def draw_detections(path: str | Path, detections: dict[str, torch.Tensor], input_size: tuple[int, int],
                    name_of: Callable[[int], str], out: Path, image: torch.Tensor | None = None,
                    masks: torch.Tensor | None = None) -> Path:
    """The image at ``path`` with ``detections`` (found on the model input of ``input_size``) drawn; a PNG.

    Where ``path`` is not a file, the model input ``image`` ``(C, H, W)`` is drawn on instead.
    ``masks``: ``(D, h, w)`` bool, one per detection at the picture's resolution (instance
    segmentation), filled in its class colour under the boxes (resized, nearest, if another size)."""
    import numpy as np
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from edh.heads.segmentation import class_colours
    from edh.utils.io import atomic_write

    if Path(path).is_file() or image is None:
        original = open_upright(path)  # EXIF orientation applied, as the model read it
        picture = torch.from_numpy(np.asarray(original.convert("RGB")).copy()).permute(2, 0, 1)
    else:
        picture = picture_of(image)
    boxes = scale_boxes(detections["boxes"].float().cpu(), input_size, tuple(picture.shape[-2:]))
    labels = detections["labels"].tolist()
    colours = class_colours(max(labels, default=0) + 1)
    text = [f"{name_of(int(l))} {float(s):.2f}" for l, s in zip(labels, detections["scores"].tolist())]
    colors = [tuple(int(255 * c) for c in colours[l]) for l in labels]
    if masks is not None and len(masks):
        if tuple(masks.shape[-2:]) != tuple(picture.shape[-2:]):
            masks = torch.nn.functional.interpolate(masks[:, None].float(), size=tuple(picture.shape[-2:]))[:, 0] > 0.5
        picture = draw_segmentation_masks(picture, masks.bool().cpu(), alpha=0.5, colors=colors)
    drawn = draw_bounding_boxes(picture, boxes, labels=text, width=max(1, min(picture.shape[-2:]) // 128),
                                colors=colors)
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(drawn.permute(1, 2, 0).numpy())
    atomic_write(out, lambda f: image.save(f, format="PNG"))
    return out
