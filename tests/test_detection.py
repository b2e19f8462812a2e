"""Detection roles: box ops, the fpn decoder, and the rpn / faster_rcnn / fcos heads (tiny models)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from edh.core.features import FeatureSpec
from edh.core.model import build
from edh.ops.anchors import AnchorGrid, cell_anchors
from edh.ops.boxes import check_targets, split_targets
from edh.ops.matching import center_sampling_match

SIZE = 64
HEADS = {
    "fcos": {"type": "fcos", "num_classes": 3, "num_convs": 1, "levels": [1, 2, 3]},
    "faster_rcnn": {"type": "faster_rcnn", "num_classes": 3, "representation_size": 32,
                    "anchor_sizes": [[16], [32], [64], [128], [256]], "rpn_pre_nms_top_n": [200, 100],
                    "rpn_post_nms_top_n": [100, 50], "box_batch_size_per_image": 64},
    "rpn": {"type": "rpn", "anchor_sizes": [[16], [32], [64], [128], [256]], "score_thresh": 0.0},
}
LOSS_TERMS = {"fcos": {"classification", "box", "centerness"}, "rpn": {"objectness", "box"},
              "faster_rcnn": {"rpn_objectness", "rpn_box", "roi_classification", "roi_box"}}


def tiny_detector(head: str, **options):
    torch.manual_seed(0)
    return build({"encoder": {"name": "test_resnet"}, "decoder": {"name": "fpn", "out_channels": 16},
                  "heads": {"det": {**HEADS[head], "source": "decoder", "target": "boxes", **options}}})


def batch(sizes=(SIZE, SIZE), empty_second: bool = False):
    torch.manual_seed(1)
    images = torch.randn(2, 3, *sizes)
    boxes = [torch.tensor([[4.0, 6.0, 30.0, 28.0], [30.0, 30.0, 60.0, 50.0]]), torch.tensor([[10.0, 10.0, 40.0, 44.0]])]
    labels = [torch.tensor([1, 3]), torch.tensor([2])]
    if empty_second:
        boxes[1], labels[1] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    return images, {"boxes": boxes, "labels": labels}


# ---- ops -------------------------------------------------------------------------------------------
def test_anchors_match_torchvision():
    sizes, ratios = ((32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 3
    reference = AnchorGenerator(sizes, ratios)
    maps = [torch.zeros(1, 8, 16, 16), torch.zeros(1, 8, 8, 8), torch.zeros(1, 8, 4, 4)]
    expected = reference(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), maps)[0]
    anchors, counts = AnchorGrid(sizes, ratios, (4, 8, 16))([(16, 16), (8, 8), (4, 4)], torch.device("cpu"))
    assert torch.equal(anchors, expected)
    assert counts == [16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3]
    assert torch.equal(cell_anchors((32,), (1.0,)), torch.tensor([[-16.0, -16.0, 16.0, 16.0]]))


def test_center_sampling_assigns_points_inside_near_the_centre():
    points = torch.tensor([[20.0, 20.0], [2.0, 2.0], [21.0, 19.0]])
    strides = torch.full((3,), 8.0)
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [15.0, 15.0, 25.0, 25.0]])
    matched = center_sampling_match(points, strides, torch.zeros(3), torch.full((3,), 1e9), boxes)
    assert matched.tolist() == [1, -1, 1]  # the smaller box wins a shared point; (2, 2) is outside both
    empty = center_sampling_match(points, strides, torch.zeros(3), torch.full((3,), 1e9), torch.zeros(0, 4))
    assert empty.tolist() == [-1, -1, -1]


@pytest.mark.parametrize("boxes, labels, message", [
    ([[5.0, 5.0, 5.0, 9.0]], [1], "zero or negative width"),
    ([[5.0, 5.0, 9.0, 2.0]], [1], "zero or negative width"),
    ([[0.0, 0.0, 4.0, 4.0]], [0], "label 0, outside 1..3"),
    ([[0.0, 0.0, 4.0, 4.0]], [4], "label 4"),
    ([[0.0, 0.0, 4.0]], [1], "expected \\(N, 4\\)"),
    ([[0.0, 0.0, 4.0, 4.0]], [1, 2], "1 boxes but labels"),
])
def test_bad_targets_are_named(boxes, labels, message):
    targets = [{"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}]
    with pytest.raises(ValueError, match=message) as error:
        check_targets(targets, num_classes=3, batch_size=1)
    assert "image 0" in str(error.value)


def test_split_targets_needs_boxes_and_labels():
    assert len(split_targets({"boxes": [torch.zeros(0, 4)], "labels": [torch.zeros(0)]})) == 1
    with pytest.raises(KeyError):
        split_targets({"boxes": [torch.zeros(0, 4)]})


# ---- fpn ---------------------------------------------------------------------------------------------
def test_fpn_decoder_shapes_and_torchvision_keys():
    model = build({"encoder": {"name": "test_resnet"}, "decoder": {"name": "fpn", "out_channels": 16},
                   "heads": {"det": HEADS["rpn"] | {"source": "decoder"}}})
    assert model.decoder.out_spec == FeatureSpec("pyramid", (16,) * 5, (4, 8, 16, 32, 64),
                                                 ("p2", "p3", "p4", "p5", "p6"))
    features = model.decoder(model.encoder(torch.zeros(1, 3, 72, 40)))
    assert [tuple(f.shape[-2:]) for f in features] == [(18, 10), (9, 5), (5, 3), (3, 2), (2, 1)]
    reference = torchvision.ops.FeaturePyramidNetwork([8, 16, 32, 64], 16)
    assert set(model.decoder.fpn.state_dict()) == set(reference.state_dict())


def test_fpn_levels_are_checked():
    with pytest.raises(Exception, match="levels \\[7\\] do not exist"):
        build({"encoder": {"name": "test_resnet"}, "decoder": {"name": "fpn", "levels": [7]}, "heads": {}})


def test_fpn_extra_p6p7():
    model = build({"encoder": {"name": "test_resnet"}, "decoder": {"name": "fpn", "out_channels": 16, "levels": [2, 3, 4],
                                                                   "extra": "p6p7"},
                   "heads": {"det": HEADS["rpn"] | {"source": "decoder"}}})  # an fpn alone is no model: a head reads it
    assert model.decoder.out_spec.strides == (8, 16, 32, 64, 128)
    assert len(model.decoder(model.encoder(torch.zeros(1, 3, 64, 64)))) == 5


def test_rpn_needs_equal_channels():
    with pytest.raises(ValueError, match="same channels on every level"):
        build({"encoder": {"name": "test_resnet"}, "heads": {"det": {"type": "faster_rcnn", "num_classes": 2}}})


# ---- heads -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_trains_with_named_losses(head):
    model = tiny_detector(head).train()
    images, targets = batch()
    outputs = model(images, targets=targets)
    det = model.heads["det"]
    losses = det.loss(outputs["det"], det.select_targets(targets, "boxes"))
    assert set(losses) == LOSS_TERMS[head]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_predicts_boxes_inside_the_input(head):
    model = tiny_detector(head, score_thresh=0.0).eval()
    images, targets = batch(sizes=(72, 56))  # no resizing, and sizes that are not multiples of 32
    with torch.no_grad():
        outputs = model(images)
        found = model.heads["det"].predict(outputs["det"])
    assert len(found) == 2
    for image in found:
        assert image["boxes"].shape[1:] == (4,) and len(image["boxes"]) == len(image["scores"]) == len(image["labels"])
        assert len(image["boxes"]) > 0
        assert (image["boxes"][:, 2] <= 56).all() and (image["boxes"][:, 3] <= 72).all() and (image["boxes"] >= 0).all()
        assert (image["scores"][:-1] >= image["scores"][1:]).all()
        assert image["labels"].min() >= 1


@pytest.mark.parametrize("head", sorted(HEADS))
def test_eval_loss_metrics_and_images_without_boxes(head):
    model = tiny_detector(head).eval()
    images, targets = batch(empty_second=True)
    det = model.heads["det"]
    with torch.no_grad():
        outputs = model(images)
        losses = det.loss(outputs["det"], det.select_targets(targets, "boxes"))
        metrics = det.make_metrics("test")
        det.update_metrics(metrics, outputs["det"], det.select_targets(targets, "boxes"))
        scalars, _ = det.summarize(metrics.compute())
    assert all(torch.isfinite(v) for v in losses.values())
    assert {"mAP", "mAP@0.5", "mAP@0.75"} <= set(scalars)
    model.train()
    train_losses = det.loss(model(images, targets=targets)["det"], det.select_targets(targets, "boxes"))
    assert all(torch.isfinite(v) for v in train_losses.values())


def test_training_without_targets_is_a_clear_error():
    model = tiny_detector("faster_rcnn").train()
    with pytest.raises(ValueError, match="no targets"):
        model(torch.zeros(1, 3, SIZE, SIZE))


def test_bad_box_in_a_batch_is_named():
    model = tiny_detector("fcos").train()
    images, targets = batch()
    targets["boxes"][1] = torch.tensor([[10.0, 10.0, 5.0, 20.0]])
    outputs = model(images, targets=targets)
    with pytest.raises(ValueError, match="image 1, box 0 .* negative width"):
        model.heads["det"].loss(outputs["det"], model.heads["det"].select_targets(targets, "boxes"))


def test_missing_targets_name_the_head():
    from edh.train.task import combine_losses

    model = tiny_detector("fcos").train()
    images, targets = batch()
    outputs = model(images, targets=targets)
    with pytest.raises(KeyError, match="head 'det' learns from target 'labels'"):
        combine_losses(model, outputs, {"boxes": targets["boxes"]})


def test_weights_round_trip(tmp_path):
    from edh.utils.io import load_tensors, save_tensors

    model = tiny_detector("faster_rcnn").eval()
    save_tensors(tmp_path / "w.safetensors", model.state_dict())
    other = tiny_detector("faster_rcnn")
    torch.nn.init.zeros_(other.heads["det"].roi.box_predictor.cls_score.weight)
    other.load_state_dict(load_tensors(tmp_path / "w.safetensors"))
    images, _ = batch()
    with torch.no_grad():
        first = model.heads["det"].predict(model(images)["det"])
        second = other.eval().heads["det"].predict(other(images)["det"])
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(first, second))


def test_describe_shows_rpn_and_roi_branches():
    model = tiny_detector("faster_rcnn")
    roles = [row.role.strip() for row in model.describe((SIZE, SIZE)).rows]
    assert roles[:3] == ["Encoder", "Decoder", "Head:det"]
    assert {"det.rpn", "det.roi.box_predictor.cls_score", "det.roi.box_predictor.bbox_pred"} <= set(roles)
    branch_rows = {row.role.strip(): row for row in model.describe((SIZE, SIZE)).rows}
    assert branch_rows["det.roi.box_predictor.cls_score"].params == (32 + 1) * 4


def test_fcos_sits_on_an_encoder_without_fpn():
    torch.manual_seed(0)
    model = build({"encoder": {"name": "test_resnet"},
                   "heads": {"det": {"type": "fcos", "num_classes": 3, "levels": [2, 3], "width": 16, "num_convs": 1}}})
    images, targets = batch()
    losses = model.heads["det"].loss(model.train()(images, targets=targets)["det"], split_targets(targets))
    assert torch.isfinite(sum(losses.values()))


@pytest.mark.parametrize("config", ["detector-fcos-scenes.yaml", "fasterrcnn-scenes.yaml", "fasterrcnn-r50-fpn.yaml"])
def test_shipped_configs_build_and_run(config):
    from edh.workflows.demo import config_path
    from edh.core.model import Model
    from edh.core.spec import RunSpec, load_spec

    spec = load_spec(config_path(config))
    model = Model(spec.model if isinstance(spec, RunSpec) else spec, pretrained=False).eval()
    head = next(iter(model.heads.values()))
    with torch.no_grad():
        found = head.predict(model(torch.randn(1, model.encoder.in_channels, 64, 64))[next(iter(model.heads))])
    assert len(found) == 1 and found[0]["boxes"].shape[-1] == 4


def test_fcos_batched_postprocess_is_per_image_filtering():
    """`FCOSHead.predict` (one batched, traceable `postprocess` for eager and ONNX) gives what filtering
    each image on its own gives: its best candidates above the threshold, class-wise NMS, best first."""
    from edh.ops.boxes import filter_detections

    model = tiny_detector("fcos", score_thresh=0.1, topk_candidates=40, max_detections=6).eval()
    det = model.heads["det"]
    with torch.no_grad():
        for conv in (det.cls_logits, det.bbox_reg, det.bbox_ctrness):  # spread the scores
            torch.nn.init.normal_(conv.weight, std=0.3)
            torch.nn.init.normal_(conv.bias, std=1.0)
        outputs = model(torch.randn(3, 3, SIZE, SIZE))["det"]
        found = det.predict(outputs)
        flat = det.postprocess(outputs)
    assert set(flat) == {"boxes", "scores", "labels", "batch_index"}
    assert det.from_postprocessed(flat, batch_size=4)[3]["boxes"].shape == (0, 4)  # an image without detections
    scores = torch.sqrt(outputs["cls_logits"].sigmoid() * outputs["centerness"].sigmoid()[..., None])
    grid = outputs["grid"]
    for image, result in enumerate(found):
        flat_scores = scores[image].flatten()
        candidates = torch.where(flat_scores > det.score_thresh)[0]
        candidates = candidates[flat_scores[candidates].topk(min(len(candidates), 40)).indices]
        location, label = candidates // 3, candidates % 3 + 1
        boxes = det.decode(outputs["box_regression"][image][location], grid.points[location], grid.strides[location])
        expected = filter_detections(boxes, flat_scores[candidates], label, outputs["image_size"], det.score_thresh,
                                     det.nms_thresh, det.max_detections)
        assert len(result["boxes"]) == len(expected["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(result[key], expected[key])


def test_pictures_and_coco_records(tmp_path):
    from PIL import Image

    model = tiny_detector("fcos", score_thresh=0.0, max_detections=5).eval()
    images, _ = batch()
    Image.new("RGB", (SIZE * 2, SIZE * 2)).save(tmp_path / "7.png")  # a file twice the input size
    paths = [tmp_path / "7.png", tmp_path / "not_a_file.png"]  # the second is drawn from the input tensor
    det = model.heads["det"]
    with torch.no_grad():
        found = det.predict(model(images)["det"])
    written = det.write_predictions(found, images, paths, tmp_path / "out")
    assert [p.name for p in written] == ["7.boxes.png", "not_a_file.boxes.png"]
    from edh.heads.detection.drawing import PICTURE_MIN_SCORE, PICTURE_MIN_SIDE, enlargement

    # small images are enlarged by a whole factor to a readable size: 128 px by 3, 64 px (the input) by 6,
    # under a strip that holds the banner
    assert enlargement((SIZE * 2, SIZE * 2)) == 3 and enlargement((SIZE, SIZE)) == 6 and enlargement((900, 400)) == 1
    for picture in written:
        width, height = Image.open(picture).size
        assert width == SIZE * 6 >= PICTURE_MIN_SIDE and SIZE * 6 + 10 < height < SIZE * 6 + 40
    assert det.picture_min_score == PICTURE_MIN_SCORE  # score_thresh 0.0: the picture keeps to 0.3
    det.score_thresh = 0.6
    assert det.picture_min_score == 0.6  # a head that keeps only higher scores: its own threshold
    det.score_thresh = 0.0
    records = det.prediction_records(found, paths, (SIZE, SIZE))
    first = [r for r in records if r["image_id"] == 7]
    assert len(first) == 5 and {r["category_id"] for r in records} <= {1, 2, 3}
    x, y, w, h = first[0]["bbox"]
    box = (found[0]["boxes"][0] * 2).tolist()  # scaled to the file's pixels, as x, y, width, height
    assert (x, y, x + w, y + h) == pytest.approx(box, abs=1e-2)
