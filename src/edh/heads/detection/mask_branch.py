"""The mask branch of Mask R-CNN (He et al. 2017): layers, targets, loss and pasting into the image.

`MaskHead` and `MaskPredictor` have torchvision's ``MaskRCNNHeads`` / ``MaskRCNNPredictor`` parameter
names and initialisation, so ``roi_heads.mask_head.*`` / ``roi_heads.mask_predictor.*`` weights load
by a prefix change (`edh.compat.torchvision_detection`). `mask_targets` and `mask_loss` are
torchvision's ``project_masks_on_boxes`` / ``maskrcnn_loss``.

`paste_masks` gives torchvision's ``paste_masks_in_image`` (pad the ``M x M`` mask by one pixel,
widen the box to match, round it to whole pixels, resize the mask bilinearly onto it, clip to the
image) for all detections at once: the bilinear resize of each mask onto its box is written as two
interpolation matrices, ``rows (D, H, M + 2) @ mask (D, M + 2, M + 2) @ columns (D, M + 2, W)``. It
has no per-detection loop, so it traces into an ONNX graph with a data-dependent number of
detections (torchvision's traced version is a scripted loop of ``D`` resizes).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align


class MaskHead(nn.Sequential):
    """RoI features -> ``len(layers)`` conv3x3 + ReLU (torchvision's ``MaskRCNNHeads``, names ``{i}.0.*``).

    Args:
        in_channels: channels of the RoI features.
        layers: output channels of each conv (torchvision: four of 256).
        dilation: dilation (and padding) of every conv.

    Shapes: ``(R, C, S, S)`` -> ``(R, layers[-1], S, S)``.
    """

    def __init__(self, in_channels: int, layers: tuple[int, ...] = (256, 256, 256, 256), dilation: int = 1) -> None:
        blocks, channels = [], in_channels
        for width in layers:
            blocks.append(nn.Sequential(nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation),
                                        nn.ReLU(inplace=True)))
            channels = width
        super().__init__(*blocks)
        self.out_channels = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)


class MaskPredictor(nn.Sequential):
    """``conv5_mask`` (ConvTranspose 2x2, stride 2) + ReLU, then ``mask_fcn_logits`` (1x1 conv): a mask
    logit map per class, background included (torchvision's ``MaskRCNNPredictor``).

    Shapes: ``(R, C, S, S)`` -> ``(R, num_classes + 1, 2 S, 2 S)``.
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(OrderedDict([
            ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
            ("relu", nn.ReLU(inplace=True)),
            ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes + 1, 1, 1, 0)),
        ]))
        for name, parameter in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(parameter, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.zeros_(parameter)


@torch.no_grad()
def mask_targets(masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int) -> torch.Tensor:
    """Each region's matched instance mask cropped to the region and resized to ``size x size`` by
    RoIAlign (adaptive sampling, as torchvision's ``project_masks_on_boxes``).

    Args:
        masks: one image's instance masks ``(N, H, W)`` (0/1, any dtype), in input pixels.
        boxes: its regions ``(P, 4)`` xyxy; matched: ``(P,)`` the instance each region learns from.

    Returns:
        ``(P, size, size)`` float targets in [0, 1].
    """
    rois = torch.cat([matched.to(boxes)[:, None], boxes], dim=1)
    return roi_align(masks[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


def mask_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each region's mask logits of its class against its target (mean over
    regions and pixels); 0 (keeping the graph) when there is no region.

    Shapes: logits ``(P, K + 1, M, M)``, labels ``(P,)``, targets ``(P, M, M)`` -> a scalar."""
    if targets.numel() == 0:
        return logits.sum() * 0
    chosen = logits[torch.arange(len(labels), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(chosen, targets.to(chosen.dtype))


def class_masks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The probability map of each region's class: ``(D, K + 1, M, M)`` logits, ``(D,)`` labels -> ``(D, M, M)``.
    A gather, not an index by ``arange(D)``: traced, the number of detections stays data-dependent."""
    index = labels.view(-1, 1, 1, 1).expand(-1, 1, logits.shape[-2], logits.shape[-1])
    return logits.gather(1, index)[:, 0].sigmoid()


def _expanded_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Boxes widened about their centre by ``scale``, truncated to whole pixels (torchvision's
    ``expand_boxes`` then ``.to(int64)``): ``(D, 4)`` int64."""
    x1, y1, x2, y2 = boxes.unbind(1)
    w_half, h_half = (x2 - x1) * 0.5 * scale, (y2 - y1) * 0.5 * scale
    x_c, y_c = (x2 + x1) * 0.5, (y2 + y1) * 0.5
    return torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).to(torch.int64)


def _interpolation_matrix(start: torch.Tensor, end: torch.Tensor, source: int, length: int) -> torch.Tensor:
    """``(D, length, source)`` weights that resize a ``source``-long axis onto the pixels ``start..end``
    (inclusive) of a ``length``-long one, zero outside: what ``F.interpolate(mode="bilinear",
    align_corners=False)`` to ``end - start + 1`` pixels, then pasting at ``start``, does per axis."""
    extent = (end - start + 1).clamp(min=1).to(torch.float32)  # (D,)
    pixel = torch.arange(length, device=start.device)  # (length,)
    offset = (pixel[None] - start[:, None]).to(torch.float32)  # (D, length): position inside the box
    ratio = (torch.full_like(extent, float(source)) / extent)[:, None]
    position = (ratio * (offset + 0.5) - 0.5).clamp(min=0)  # source coordinate, as PyTorch computes it
    low = position.floor().clamp(max=source - 1)
    frac = (position - low).clamp(0, 1)
    high = torch.where(low < source - 1, low + 1, low)
    same = extent[:, None] == source  # PyTorch copies when the sizes agree
    frac = torch.where(same, torch.zeros_like(frac), frac)
    low = torch.where(same, offset, low)
    high = torch.where(same, offset, high)
    inside = ((pixel[None] >= start[:, None]) & (pixel[None] <= end[:, None])).to(torch.float32)
    taps = torch.arange(source, device=start.device).to(torch.float32)  # (source,)
    weights = ((1 - frac)[..., None] * (taps == low[..., None]).to(torch.float32)
               + frac[..., None] * (taps == high[..., None]).to(torch.float32))
    return weights * inside[..., None]


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                padding: int = 1) -> torch.Tensor:
    """Masks on each box's grid pasted into an image (torchvision's ``paste_masks_in_image``).

    Args:
        masks: ``(D, M, M)`` per-detection probabilities (or logits) over its box.
        boxes: ``(D, 4)`` xyxy in the image's pixels.
        image_size: ``(H, W)`` of the image.
        padding: zero border added to each mask before resizing (torchvision: 1).

    Returns:
        ``(D, H, W)``, zero outside each detection's (widened, whole-pixel) box.
    """
    height, width = int(image_size[0]), int(image_size[1])
    size = masks.shape[-1]
    padded = F.pad(masks.float(), (padding,) * 4)  # (D, M + 2p, M + 2p)
    source = size + 2 * padding
    box = _expanded_boxes(boxes, float(source) / size)
    rows = _interpolation_matrix(box[:, 1], box[:, 3], source, height)  # (D, H, S)
    columns = _interpolation_matrix(box[:, 0], box[:, 2], source, width)  # (D, W, S)
    with torch.autocast(masks.device.type, enabled=False):  # float32 weights, as F.interpolate would use
        return rows @ (padded @ columns.transpose(1, 2))  # (D, H, W)
