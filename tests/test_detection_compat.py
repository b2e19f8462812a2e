"""torchvision Faster R-CNN weights in edh give torchvision's detections (same boxes, labels, order)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from edh.compat.torchvision_detection import (convert_state_dict, fasterrcnn_resnet50_fpn_spec,
                                              load_fasterrcnn_weights)
from edh.core.model import build

LAYERS = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}


def _scene(size: int) -> torch.Tensor:
    """A normalised scenes image (real digit sprites), upscaled to ``size``: what both models see."""
    from edh.data.base import build_data

    bundle = build_data("scenes", {"num_train": 1, "num_val": 0, "num_test": 0, "image_size": 64,
                                   "objects": [3, 3]}, seed=3)
    image = bundle.train[0][0]
    return torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear")[0]


def _torchvision_detections(model: torch.nn.Module, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        return model(list(images))


def _edh_detections(model, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        head = model.heads["detections"]
        return head.predict(model(images)["detections"])


def _assert_same(expected, found, tolerance: float = 1e-3) -> None:
    for reference, ours in zip(expected, found):
        assert len(reference["boxes"]) > 0, "the check needs detections to compare"
        assert torch.equal(reference["labels"], ours["labels"])
        assert (reference["boxes"] - ours["boxes"]).abs().max() <= tolerance
        assert torch.allclose(reference["scores"], ours["scores"], atol=1e-4)


def _same_input_torchvision(size: int, **kwargs):
    """torchvision settings under which its transform leaves edh's (already normalised) input alone."""
    return dict(min_size=size, max_size=size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], **kwargs)


def test_small_fasterrcnn_matches_torchvision():
    size = 128
    torch.manual_seed(0)
    backbone = BackboneWithFPN(torchvision.models.resnet18(), LAYERS, [64, 128, 256, 512], 64)
    reference = FasterRCNN(backbone, num_classes=6, **_same_input_torchvision(size, box_score_thresh=0.01)).eval()
    spec = {"encoder": {"name": "resnet18"}, "decoder": {"name": "fpn", "out_channels": 64, "levels": [1, 2, 3, 4]},
            "heads": {"detections": {"type": "faster_rcnn", "source": "decoder", "num_classes": 5,
                                     "score_thresh": 0.01}}}
    model = load_fasterrcnn_weights(build(spec, pretrained=False).eval(), reference.state_dict())
    images = torch.stack([_scene(size), torch.randn(3, size, size)])
    _assert_same(_torchvision_detections(reference, images), _edh_detections(model, images))


def test_weight_mapping_names_what_does_not_fit():
    state = {"backbone.body.conv1.weight": torch.zeros(1), "roi_heads.mask_head.0.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match="roi_heads.mask_head"):
        convert_state_dict(state)
    small = build(fasterrcnn_resnet50_fpn_spec(3).copy() | {"encoder": {"name": "resnet18"}}, pretrained=False)
    with pytest.raises(ValueError, match="missing"):
        load_fasterrcnn_weights(small, {"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7)})


@pytest.mark.slow
def test_fasterrcnn_resnet50_fpn_matches_torchvision():
    size = 320
    torch.manual_seed(0)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, **_same_input_torchvision(size)).eval()
    model = build(fasterrcnn_resnet50_fpn_spec(91), pretrained=False).eval()
    load_fasterrcnn_weights(model, reference.state_dict())
    images = _scene(size)[None]
    _assert_same(_torchvision_detections(reference, images), _edh_detections(model, images))
