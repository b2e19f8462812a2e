"""torchvision ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` weights in an edh model
(resnet50 -> fpn -> faster_rcnn / mask_rcnn).

The key mapping is a prefix change; every tensor keeps its name below the prefix:

=====================================  ==========================================
torchvision                            edh
=====================================  ==========================================
``backbone.body.*``                    ``encoder.*``
``backbone.fpn.*``                     ``decoder.fpn.*``
``rpn.head.*``                         ``heads.<head>.rpn.head.*``
``roi_heads.box_head.*``               ``heads.<head>.roi.box_head.*``
``roi_heads.box_predictor.*``          ``heads.<head>.roi.box_predictor.*``
``roi_heads.mask_head.*`` (Mask R-CNN)  ``heads.<head>.mask_head.*``
``roi_heads.mask_predictor.*``          ``heads.<head>.mask_predictor.*``
=====================================  ==========================================

Pretrained torchvision detectors use ``FrozenBatchNorm2d``, which has no
``num_batches_tracked``; the mapping adds it (zero), so the file loads into edh's BatchNorm. Class
ids are unchanged: torchvision's ``num_classes`` counts the background (91 for COCO), edh's does
not (90), and both give label ``k`` to the ``k``-th row after the background's.

Inputs differ in one way: torchvision normalises and resizes inside the model
(``GeneralizedRCNNTransform``: ImageNet mean / std, shorter side to 800), edh takes the input
as given. Normalise images with the same mean / std (edh's data pipelines do) and feed them at the
size you want; torchvision built with ``min_size = max_size = that size`` then sees the same
tensor, and both give the same detections (``tests/test_detection_compat.py``) and masks
(``tests/test_mask_rcnn.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PREFIXES = (
    ("backbone.body.", "encoder."),
    ("backbone.fpn.", "decoder.fpn."),
    ("rpn.head.", "heads.{head}.rpn.head."),
    ("roi_heads.box_head.", "heads.{head}.roi.box_head."),
    ("roi_heads.box_predictor.", "heads.{head}.roi.box_predictor."),
)
MASK_PREFIXES = (
    ("roi_heads.mask_head.", "heads.{head}.mask_head."),
    ("roi_heads.mask_predictor.", "heads.{head}.mask_predictor."),
)


def fasterrcnn_resnet50_fpn_spec(num_classes: int = 91, head: str = "detections", **head_options: Any) -> dict[str, Any]:
    """The edh model spec of torchvision's ``fasterrcnn_resnet50_fpn(num_classes=num_classes)``.

    Args:
        num_classes: torchvision's count, background included (91 for COCO).
        head: the name of the detection head.
        head_options: more `FasterRCNNHead` options (``score_thresh``, ``max_detections``...).
    """
    return {
        "encoder": {"name": "resnet50"},
        "decoder": {"name": "fpn", "out_channels": 256, "levels": [1, 2, 3, 4], "extra": "maxpool"},
        "heads": {head: {"type": "faster_rcnn", "source": "decoder", "target": "boxes", "num_classes": num_classes - 1,
                         **head_options}},
    }


def maskrcnn_resnet50_fpn_spec(num_classes: int = 91, head: str = "detections", **head_options: Any) -> dict[str, Any]:
    """The edh model spec of torchvision's ``maskrcnn_resnet50_fpn(num_classes=num_classes)``: the
    Faster R-CNN spec with a ``mask_rcnn`` head (torchvision's mask defaults).

    Args:
        num_classes: torchvision's count, background included (91 for COCO).
        head: the name of the detection head.
        head_options: more `MaskRCNNHead` options (``score_thresh``, ``mask_thresh``...).
    """
    spec = fasterrcnn_resnet50_fpn_spec(num_classes, head, **head_options)
    spec["heads"][head]["type"] = "mask_rcnn"
    return spec


def convert_state_dict(state: dict[str, torch.Tensor], head: str = "detections",
                       masks: bool = False) -> dict[str, torch.Tensor]:
    """torchvision ``fasterrcnn_*_fpn`` (or with ``masks``, ``maskrcnn_*_fpn``) state dict -> edh state
    dict (see the module docstring).

    Raises:
        KeyError: for keys of parts edh does not have (keypoint heads; mask heads without ``masks``),
            all named.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    prefixes = PREFIXES + (MASK_PREFIXES if masks else ())
    for key, value in state.items():
        for source, target in prefixes:
            if key.startswith(source):
                out[target.format(head=head) + key[len(source):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        parts = "Mask R-CNN's backbone, FPN, RPN, box and mask heads" if masks else \
            "Faster R-CNN's backbone, FPN, RPN and box heads; Mask R-CNN's mask heads with masks=True"
        raise KeyError(f"{len(unknown)} torchvision keys have no edh counterpart (only {parts} map): "
                       f"{', '.join(unknown[:8])}")
    for key in [k for k in out if k.startswith("encoder.") and k.endswith(".running_var")]:
        tracked = key[: -len("running_var")] + "num_batches_tracked"
        out.setdefault(tracked, torch.tensor(0, dtype=torch.long))
    return out


def load_fasterrcnn_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor] | str | Path,
                            head: str = "detections") -> torch.nn.Module:
    """Load a torchvision Faster R-CNN state dict (or a ``.pth`` / ``.safetensors`` file) into ``model``.

    Every missing, unexpected or mis-shaped tensor is named in the error.
    """
    return _load(model, weights, head, masks=False)


def load_maskrcnn_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor] | str | Path,
                          head: str = "detections") -> torch.nn.Module:
    """Load a torchvision Mask R-CNN state dict (or a ``.pth`` / ``.safetensors`` file) into ``model``
    (built from `maskrcnn_resnet50_fpn_spec`, or any spec with a ``mask_rcnn`` head of the same shapes).

    Every missing, unexpected or mis-shaped tensor is named in the error.
    """
    return _load(model, weights, head, masks=True)


def _load(model: torch.nn.Module, weights: dict[str, torch.Tensor] | str | Path, head: str,
          masks: bool) -> torch.nn.Module:
    if not isinstance(weights, dict):
        from edh.utils.io import load_tensors

        weights = load_tensors(weights)
    state = convert_state_dict(weights, head, masks)
    own = model.state_dict()
    wrong = [f"{k} (torchvision {tuple(v.shape)}, edh {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        spec = "maskrcnn_resnet50_fpn_spec" if masks else "fasterrcnn_resnet50_fpn_spec"
        raise ValueError("torchvision weights do not fit this edh model: "
                         + "; ".join(part for part in (
                             "shapes differ: " + ", ".join(wrong[:6]) if wrong else "",
                             "missing: " + ", ".join(missing[:6]) if missing else "",
                             "unexpected: " + ", ".join(unexpected[:6]) if unexpected else "") if part)
                         + f". Build the model from {spec}(num_classes=...) with torchvision's "
                           "num_classes (background included).")
    model.load_state_dict(state)
    return model
