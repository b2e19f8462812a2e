"""The mask_rcnn head: torchvision's Mask R-CNN (same masks from converted weights), its loss, mask mAP,
pictures and COCO RLE records, errors for data without masks, and ONNX export + onnxruntime predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss, paste_masks_in_image
from torchvision.ops import clip_boxes_to_image

import roles  # noqa: F401  (first: roles.py merges cases_mask.py into its table)
from cases_mask import instance_targets
from edh.compat.torchvision_detection import convert_state_dict, load_maskrcnn_weights, maskrcnn_resnet50_fpn_spec
from edh.core.errors import SpecError
from edh.core.model import build
from edh.heads.detection.mask_branch import mask_loss, mask_targets, paste_masks
from test_detection_compat import LAYERS, _same_input_torchvision, _scene

SIZE = 64
TINY_HEAD = {"type": "mask_rcnn", "source": "decoder", "target": "boxes", "num_classes": 3, "representation_size": 32,
             "anchor_sizes": [[16], [32], [64], [128], [256]], "rpn_pre_nms_top_n": [200, 100],
             "rpn_post_nms_top_n": [100, 50], "box_batch_size_per_image": 64, "mask_layers": [16, 16],
             "mask_dim_reduced": 16, "max_detections": 20}


def tiny_model(**options):
    torch.manual_seed(0)
    return build({"encoder": {"name": "test_resnet"}, "decoder": {"name": "fpn", "out_channels": 16},
                  "heads": {"det": {**TINY_HEAD, **options}}})


def tiny_batch() -> tuple[torch.Tensor, dict]:
    torch.manual_seed(1)
    images = torch.randn(2, 3, SIZE, SIZE)
    return images, instance_targets(images, {})


# ---- the mask branch's pieces against torchvision's --------------------------------------------------
def test_paste_masks_matches_torchvision():
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(120, 2, generator=generator) * 140 - 20
    extent = torch.rand(120, 2, generator=generator) * 80
    extent[:6] = torch.rand(6, 2, generator=generator) * 2  # boxes of about a pixel
    extent[6:9] = 26.0  # widened to 28 x 28: the copy case of F.interpolate
    boxes = clip_boxes_to_image(torch.cat([corner, corner + extent], 1), (100, 120))
    boxes = boxes[((boxes[:, 2:] - boxes[:, :2]) > 0.01).all(1)]
    masks = torch.rand(len(boxes), 28, 28, generator=generator)
    expected = paste_masks_in_image(masks[:, None], boxes, (100, 120))[:, 0]
    found = paste_masks(masks, boxes, (100, 120))
    assert found.shape == expected.shape
    assert (found - expected).abs().max() < 1e-5
    assert torch.equal(found > 0.5, expected > 0.5) and torch.equal(found == 0, expected == 0)
    assert paste_masks(masks[:0], boxes[:0], (8, 9)).shape == (0, 8, 9)


def test_mask_loss_matches_torchvision():
    generator = torch.Generator().manual_seed(0)
    gt_masks = (torch.rand(3, 40, 50, generator=generator) > 0.5).to(torch.uint8)
    gt_labels = torch.tensor([1, 4, 2])
    proposals = torch.tensor([[2.0, 3.0, 30.0, 20.0], [10.0, 5.0, 45.0, 38.0], [0.0, 0.0, 12.0, 9.0],
                              [20.0, 10.0, 49.0, 39.0]])
    matched = torch.tensor([0, 1, 2, 1])
    logits = torch.randn(4, 5, 28, 28, generator=generator)
    expected = maskrcnn_loss(logits, [proposals], [gt_masks], [gt_labels], [matched])
    found = mask_loss(logits, gt_labels[matched], mask_targets(gt_masks, proposals, matched, 28))
    torch.testing.assert_close(found, expected)
    empty = logits[:0].requires_grad_()
    assert mask_loss(empty, gt_labels[:0], torch.zeros(0, 28, 28)).item() == 0.0


# ---- torchvision's weights, torchvision's masks -----------------------------------------------------
def _assert_same_masks(expected, found) -> None:
    for reference, ours in zip(expected, found):
        assert len(reference["boxes"]) > 0, "the check needs detections to compare"
        assert torch.equal(reference["labels"], ours["labels"])
        assert (reference["boxes"] - ours["boxes"]).abs().max() <= 1e-3
        assert ours["masks"].shape == reference["masks"].shape  # (D, 1, H, W) probabilities
        assert (reference["masks"] - ours["masks"]).abs().max() <= 1e-3
        assert torch.equal(reference["masks"] > 0.5, ours["masks"] > 0.5)


def _edh_predictions(model, images):
    with torch.no_grad():
        head = model.heads["detections"]
        return head.predict(model(images)["detections"])


def test_small_maskrcnn_matches_torchvision():
    size = 128
    torch.manual_seed(0)
    backbone = BackboneWithFPN(torchvision.models.resnet18(), LAYERS, [64, 128, 256, 512], 64)
    reference = MaskRCNN(backbone, num_classes=None, box_predictor=FastRCNNPredictor(1024, 6),
                         mask_head=MaskRCNNHeads(64, [32, 32], 1), mask_predictor=MaskRCNNPredictor(32, 32, 6),
                         **_same_input_torchvision(size, box_score_thresh=0.01, box_detections_per_img=30)).eval()
    spec = {"encoder": {"name": "resnet18"}, "decoder": {"name": "fpn", "out_channels": 64, "levels": [1, 2, 3, 4]},
            "heads": {"detections": {"type": "mask_rcnn", "source": "decoder", "num_classes": 5, "score_thresh": 0.01,
                                     "max_detections": 30, "mask_layers": [32, 32], "mask_dim_reduced": 32}}}
    model = load_maskrcnn_weights(build(spec, pretrained=False).eval(), reference.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    images = torch.stack([_scene(size), torch.randn(3, size, size)])
    with torch.no_grad():
        expected = reference(list(images))
    _assert_same_masks(expected, _edh_predictions(model, images))


def test_mask_weights_map_only_with_masks():
    state = {"roi_heads.mask_head.0.0.weight": torch.zeros(1),
             "roi_heads.mask_predictor.conv5_mask.bias": torch.zeros(1)}
    assert set(convert_state_dict(state, "objects", masks=True)) == {"heads.objects.mask_head.0.0.weight",
                                                                     "heads.objects.mask_predictor.conv5_mask.bias"}
    with pytest.raises(KeyError, match="masks=True"):
        convert_state_dict(state)
    assert maskrcnn_resnet50_fpn_spec(91)["heads"]["detections"]["type"] == "mask_rcnn"


@pytest.mark.slow
def test_maskrcnn_resnet50_fpn_matches_torchvision():
    size = 320
    torch.manual_seed(0)
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, **_same_input_torchvision(size)).eval()
    model = build(maskrcnn_resnet50_fpn_spec(91), pretrained=False).eval()
    load_maskrcnn_weights(model, reference.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    images = _scene(size)[None]
    with torch.no_grad():
        expected = reference(list(images))
    _assert_same_masks(expected, _edh_predictions(model, images))


# ---- training, metrics --------------------------------------------------------------------------------
def test_mask_loss_decreases_and_eval_gives_mask_map():
    model = tiny_model(score_thresh=0.0)
    head = model.heads["det"]
    images, targets = tiny_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(25):
        terms = head.loss(model(images, targets=targets)["det"], head.select_targets(targets, "boxes"))
        assert set(terms) == {"rpn_objectness", "rpn_box", "roi_classification", "roi_box", "roi_mask"}
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()
        losses.append(terms["roi_mask"].item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    model.eval()
    with torch.no_grad():
        outputs = model(images)["det"]
        assert torch.isfinite(head.loss(outputs, head.select_targets(targets, "boxes"))["roi_mask"])
        metrics = head.make_metrics("test")
        head.update_metrics(metrics, outputs, head.select_targets(targets, "boxes"))
    scalars, lines = head.summarize(metrics.compute())
    for key in ("mAP", "mAP@0.5", "mAP@0.75", "mask_mAP", "mask_mAP@0.5", "mask_mAP@0.75"):
        assert 0.0 <= scalars[key] <= 1.0, key
    assert any("mask AP" in line for line in lines)


def test_perfect_masks_score_one():
    head = tiny_model().heads["det"]
    images, targets = tiny_batch()
    metrics = head.make_metrics()
    truth = head.select_targets(targets, "boxes")
    predicted = [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"],
                  "masks": t["masks"].bool()} for t in truth]
    metrics.update(predicted, [{"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"].bool()} for t in truth])
    scalars, _ = head.summarize(metrics.compute())
    assert scalars["mask_mAP"] == pytest.approx(1.0) and scalars["mAP"] == pytest.approx(1.0)


def test_training_without_masks_is_named():
    model = tiny_model().train()
    images, targets = tiny_batch()
    del targets["masks"]
    with pytest.raises(ValueError, match="the data gives no instance masks"):
        model(images, targets=targets)


def test_data_without_masks_is_refused_at_bind():
    from edh.data.base import DataInfo

    head = tiny_model().heads["det"]
    info = DataInfo(input_kind="image", in_channels=3, targets={"boxes": "detection", "labels": "detection"})
    with pytest.raises(SpecError, match="the data gives no instance masks"):
        head.bind_data(info)
    head.bind_data(DataInfo(input_kind="image", in_channels=3,
                            targets={"boxes": "detection", "labels": "detection", "masks": "instance_segmentation"}))


# ---- pictures and records -----------------------------------------------------------------------------
def test_pictures_and_rle_records_at_the_file_resolution(tmp_path):
    from pycocotools import mask as mask_utils

    model = tiny_model(score_thresh=0.0).eval()
    head = model.heads["det"]
    images, _ = tiny_batch()
    with torch.no_grad():
        prediction = head.predict(model(images)["det"])
    assert prediction[0]["masks"].shape == (len(prediction[0]["boxes"]), 1, SIZE, SIZE)
    big = tmp_path / "000000007.png"  # a file larger than the model input: masks are pasted at its size
    Image.fromarray(np.zeros((96, 80, 3), dtype=np.uint8)).save(big)
    same = tmp_path / "same.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 3), dtype=np.uint8)).save(same)
    written = head.write_predictions(prediction, images, [big, same], tmp_path / "out")
    from edh.heads.detection.drawing import enlargement

    # each drawn at the file's size enlarged by a whole factor, under the banner's strip
    for picture, (height, width) in zip(written, [(96, 80), (SIZE, SIZE)]):
        factor = enlargement((height, width))
        drawn_width, drawn_height = Image.open(picture).size
        assert factor > 1 and drawn_width == width * factor and 10 < drawn_height - height * factor < 40
    records = head.prediction_records(prediction, [big, same], (SIZE, SIZE))
    assert len(records) == sum(len(p["boxes"]) for p in prediction) > 0
    json.dumps(records)
    first = [r for r in records if r["image_id"] == 7]
    decoded = mask_utils.decode([r["segmentation"] for r in first])  # (h, w, D)
    assert decoded.shape == (96, 80, len(first))
    expected = head.masks_at(prediction[0], (SIZE, SIZE), (96, 80))
    assert np.array_equal(decoded.transpose(2, 0, 1), expected.numpy())
    second = mask_utils.decode([r["segmentation"] for r in records[len(first):]])
    assert np.array_equal(second.transpose(2, 0, 1), (prediction[1]["masks"][:, 0] > 0.5).numpy())
    assert all(isinstance(r["segmentation"]["counts"], str) for r in records)


# ---- a run: export and predict over onnxruntime ---------------------------------------------------------
@pytest.fixture(scope="module")
def mask_run(tmp_path_factory):
    from test_export import PYRAMID, SCENES, make_run

    head = {**TINY_HEAD, "num_classes": 10, "score_thresh": 0.05, "anchor_sizes": [[16], [32], [64]]}
    return make_run({"model": {**PYRAMID, "heads": {"objects": head}}, "data": SCENES},
                    tmp_path_factory.mktemp("mask_run") / "run")


@pytest.mark.slow
def test_export_equals_eager_and_onnxruntime_predicts(mask_run, tmp_path):
    from edh.export.runs import export_run, onnx_run
    from edh.workflows.predict import predict_inputs

    pytest.importorskip("onnxruntime")
    report = export_run(mask_run)
    names = [c.name for c in report.checks["model.onnx"]]
    assert "objects.masks" in names and "objects.boxes" in names
    assert report.checks["model.onnx"][0].shape[0] > 0, "the check needs detections to compare"
    assert report.max_abs_diff < 1e-3
    backed = onnx_run(mask_run)
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        head = mask_run.model.heads["objects"]
        eager = head.predict(mask_run.model.eval()(images)["objects"])
        exported = backed.model.heads["objects"].predict(backed.model(images)["objects"])
    reference, other = head.align_predictions(eager, exported)
    torch.testing.assert_close(other["boxes"], reference["boxes"], atol=1e-3, rtol=0)
    assert torch.equal(other["masks"] > 0.5, reference["masks"] > 0.5)
    picture = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(picture)
    _, written = predict_inputs(backed, [picture], out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "scene.boxes.png") in written
    rows = json.loads((tmp_path / "out" / "objects.json").read_text())
    assert all("segmentation" in row for row in rows)


@pytest.mark.parametrize("config", ["maskrcnn-scenes.yaml", "maskrcnn-r50-fpn.yaml"])
def test_shipped_configs_build_and_predict_masks(config):
    from edh.core.model import Model
    from edh.core.spec import RunSpec, load_spec
    from edh.workflows.demo import config_path

    spec = load_spec(config_path(config))
    model = Model(spec.model if isinstance(spec, RunSpec) else spec, pretrained=False).eval()
    name = next(iter(model.heads))
    with torch.no_grad():
        found = model.heads[name].predict(model(torch.randn(1, 3, SIZE, SIZE))[name])
    assert len(found) == 1 and found[0]["masks"].shape[1:] == (1, SIZE, SIZE)


def test_no_detections_and_images_without_objects(tmp_path):
    model = tiny_model(score_thresh=0.999)
    head = model.heads["det"]
    images, targets = tiny_batch()
    with torch.no_grad():
        outputs = model.eval()(images)["det"]
        assert head.loss(outputs, head.select_targets(targets, "boxes"))["roi_mask"].item() == 0.0
        found = head.predict(outputs)
    assert found[0]["masks"].shape == (0, 1, SIZE, SIZE) and found[0]["box_masks"].shape == (0, 28, 28)
    assert head.prediction_records(found, [tmp_path / "a.png", tmp_path / "b.png"], (SIZE, SIZE)) == []
    targets["boxes"][1], targets["labels"][1] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    targets["masks"][1] = torch.zeros(0, SIZE, SIZE, dtype=torch.uint8)
    terms = head.loss(model.train()(images, targets=targets)["det"], head.select_targets(targets, "boxes"))
    assert torch.isfinite(terms["roi_mask"])
