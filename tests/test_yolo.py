"""The YOLOv8-style detector: csp_darknet encoder, pafpn neck, yolo head (tiny models), and the
task-aligned assigner / DFL ops under it."""

from __future__ import annotations

import pytest
import torch

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.core.model import build
from edh.ops.assign import (box_to_distances, dfl_decode, distances_to_box, distribution_focal_loss, pad_boxes,
                            task_aligned_assign)
from edh.ops.anchors import grid_points

SIZE = 64
TINY_CSP = {"name": "csp_darknet", "preset": "n", "width_multiple": 0.125}  # widths 8..128
PUBLISHED = {"n": 3_157_200, "s": 11_166_560, "m": 25_902_640}  # YOLOv8 n/s/m detection models, 80 classes


def tiny_yolo(encoder: dict | None = None, **options):
    torch.manual_seed(0)
    return build({"encoder": encoder or TINY_CSP, "decoder": {"name": "pafpn"},
                  "heads": {"det": {"type": "yolo", "source": "decoder", "target": "boxes", "num_classes": 3,
                                    "prior_image_size": SIZE, **options}}})


def batch(empty_second: bool = False):
    torch.manual_seed(1)
    images = torch.randn(2, 3, SIZE, SIZE)
    boxes = [torch.tensor([[4.0, 6.0, 30.0, 28.0], [30.0, 30.0, 60.0, 50.0]]), torch.tensor([[10.0, 10.0, 40.0, 44.0]])]
    labels = [torch.tensor([1, 3]), torch.tensor([2])]
    if empty_second:
        boxes[1], labels[1] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    return images, {"boxes": boxes, "labels": labels}


# ---- presets -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_presets_have_yolov8s_parameter_count_and_run(preset):
    """n / s / m with 80 classes: YOLOv8's published counts, which include the 16 fixed DFL bins."""
    from edh.core.model import Model
    from edh.core.spec import load_spec
    from edh.workflows.demo import config_path

    model = Model(load_spec(config_path(f"yolov8{preset}.yaml")), pretrained=False).eval()
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[preset]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == PUBLISHED[preset] - 16
    assert model.decoder.out_spec.strides == (8, 16, 32)
    assert model.decoder.out_spec.channels == model.encoder.out_spec.channels[2:]  # the neck keeps the widths
    with torch.no_grad():
        found = model.heads["detections"].predict(model(torch.randn(1, 3, SIZE, SIZE))["detections"])
    assert len(found) == 1 and found[0]["boxes"].shape[-1] == 4


def test_csp_darknet_pyramid_and_overrides():
    from edh.core.builder import build_component

    encoder = build_component("encoder", "csp_darknet", {"preset": "s", "max_channels": 256}, "encoder")
    assert encoder.out_spec.strides == (2, 4, 8, 16, 32)
    assert encoder.out_spec.channels == (32, 64, 128, 128, 128)  # min(c, 256) * 0.5
    levels = encoder(torch.randn(1, 3, 72, 40))
    assert [tuple(l.shape[-2:]) for l in levels] == [(36, 20), (18, 10), (9, 5), (5, 3), (3, 2)]
    with pytest.raises(SpecError, match="preset"):
        build_component("encoder", "csp_darknet", {"preset": "q"}, "encoder")


# ---- the neck -----------------------------------------------------------------------------------------
def test_pafpn_fits_a_resnet18_and_trains_a_yolo_head():
    model = tiny_yolo({"name": "resnet18"})
    assert model.decoder.levels == [2, 3, 4] and model.decoder.out_spec.channels == (128, 256, 512)
    images, targets = batch()
    det = model.heads["det"]
    losses = det.loss(model.train()(images, targets=targets)["det"], det.select_targets(targets, "boxes"))
    assert set(losses) == {"classification", "box", "dfl"} and torch.isfinite(sum(losses.values()))


def test_pafpn_options_and_errors():
    from edh.decoders.pafpn import PAFPNDecoder

    spec = FeatureSpec("pyramid", (8, 16, 32, 64), (4, 8, 16, 32))
    neck = PAFPNDecoder(spec, levels=[2, 3], channels=[24, 40], preset="m")
    assert neck.out_spec.channels == (24, 40) and neck.out_spec.strides == (16, 32)
    assert len(neck.top_down[0].m) == 2  # preset m: 3 x 0.67 bottlenecks per C2f
    out = neck([torch.randn(1, c, 64 // s, 64 // s) for c, s in zip(spec.channels, spec.strides)])
    assert [tuple(o.shape[1:]) for o in out] == [(24, 4, 4), (40, 2, 2)]
    dilated = FeatureSpec("pyramid", (8, 16, 32), (8, 16, 16))  # an encoder with output_stride 16
    out = PAFPNDecoder(dilated)([torch.randn(1, c, 64 // s, 64 // s) for c, s in zip(dilated.channels, dilated.strides)])
    assert [tuple(o.shape[1:]) for o in out] == [(8, 8, 8), (16, 4, 4), (32, 4, 4)]
    with pytest.raises(ValueError, match="twice"):
        PAFPNDecoder(spec, levels=[1, 3])
    with pytest.raises(ValueError, match="at least two levels"):
        PAFPNDecoder(spec, levels=[3])
    with pytest.raises(ValueError, match="one per level"):
        PAFPNDecoder(spec, channels=[8])


# ---- assignment and DFL ------------------------------------------------------------------------------
def _one_box_problem(topk: int):
    points = grid_points((8, 8), 8)  # cell centres 4, 12, ..., 60
    gt = torch.tensor([[[8.0, 8.0, 40.0, 40.0]]])  # 16 cell centres inside: 12..36 in x and y
    centre = torch.tensor([24.0, 24.0])
    predicted = (gt[0, 0] + (points - centre).repeat(1, 2) * 0.5)[None]  # worse the farther from the centre
    scores = torch.full((1, len(points), 2), 0.5)
    return points, task_aligned_assign(scores, predicted, points, gt, torch.tensor([[1]]), torch.ones(1, 1).bool(),
                                       topk=topk)


def test_a_box_takes_its_topk_best_aligned_points_inside_it():
    points, assigned = _one_box_problem(topk=4)
    taken = points[assigned.foreground[0]]
    assert sorted(map(tuple, taken.tolist())) == [(20.0, 20.0), (20.0, 28.0), (28.0, 20.0), (28.0, 28.0)]
    assert (assigned.labels[0][assigned.foreground[0]] == 1).all()
    assert torch.equal(assigned.boxes[0][assigned.foreground[0]], torch.tensor([[8.0, 8.0, 40.0, 40.0]] * 4))
    assert (assigned.scores[0, :, 0] == 0).all() and (assigned.scores[0, ~assigned.foreground[0]] == 0).all()
    points, assigned = _one_box_problem(topk=40)  # more than the 16 points inside: all of them, and none outside
    inside = (points > 8).all(1) & (points < 40).all(1)
    assert torch.equal(assigned.foreground[0], inside)


def test_a_point_two_boxes_take_keeps_the_one_it_overlaps_most():
    points = torch.tensor([[28.0, 28.0], [4.0, 4.0], [44.0, 44.0]])
    gt = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [16.0, 16.0, 48.0, 48.0]]])
    predicted = torch.tensor([[[16.0, 16.0, 48.0, 48.0], [0.0, 0.0, 30.0, 30.0], [18.0, 18.0, 48.0, 48.0]]])
    scores = torch.full((1, 3, 4), 0.5)
    assigned = task_aligned_assign(scores, predicted, points, gt, torch.tensor([[0, 3]]), torch.ones(1, 2).bool(),
                                   topk=3)
    assert assigned.foreground[0].tolist() == [True, True, True]
    assert assigned.gt_index[0].tolist() == [1, 0, 1]  # the shared point (28, 28) predicts box 1 exactly
    assert assigned.labels[0].tolist() == [3, 0, 3]
    assert assigned.scores[0, 0, 3] == pytest.approx(1.0)  # box 1's best point: its overlap, 1


def test_padding_and_images_without_boxes_are_background():
    boxes, labels, mask = pad_boxes([torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.zeros(0, 4)],
                                    [torch.tensor([2]), torch.zeros(0, dtype=torch.long)])
    assert boxes.shape == (2, 1, 4) and mask.tolist() == [[True], [False]]
    points = grid_points((8, 8), 8)
    predicted = torch.tensor([8.0, 8.0, 40.0, 40.0]).expand(2, 64, 4)
    assigned = task_aligned_assign(torch.full((2, 64, 3), 0.5), predicted, points, boxes, labels, mask)
    assert assigned.foreground[0].sum() == 10 and not assigned.foreground[1].any()
    none = task_aligned_assign(torch.full((2, 64, 3), 0.5), predicted, points, boxes[:, :0], labels[:, :0],
                               mask[:, :0])
    assert not none.foreground.any() and none.scores.sum() == 0


def test_dfl_decodes_its_two_hot_targets_back():
    torch.manual_seed(0)
    reg_max = 16
    distances = torch.rand(50, 4) * (reg_max - 1 - 0.01)
    left = distances.long()
    two_hot = torch.zeros(50, 4, reg_max)
    two_hot.scatter_(-1, left[..., None], (1 - (distances - left))[..., None])
    two_hot.scatter_add_(-1, (left + 1)[..., None], (distances - left)[..., None])
    logits = two_hot.clamp(min=1e-12).log().flatten(1)  # (50, 4 reg_max)
    torch.testing.assert_close(dfl_decode(logits, reg_max), distances, atol=1e-5, rtol=0)
    points, strides = torch.rand(50, 2) * 100, torch.tensor([8.0, 16.0, 32.0]).repeat(17)[:50]
    boxes = distances_to_box(distances, points, strides)
    torch.testing.assert_close(box_to_distances(boxes, points, strides, reg_max), distances, atol=1e-4, rtol=0)
    best = distribution_focal_loss(logits.view(-1, reg_max), distances.flatten())
    worse = distribution_focal_loss(logits.view(-1, reg_max) + torch.randn(200, reg_max), distances.flatten())
    assert (best <= worse + 1e-6).all()


# ---- the head ------------------------------------------------------------------------------------------
def test_loss_decreases_on_a_tiny_problem():
    model = tiny_yolo().train()
    det = model.heads["det"]
    images, targets = batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005)
    totals = []
    for _ in range(25):
        losses = det.loss(model(images, targets=targets)["det"], det.select_targets(targets, "boxes"))
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert all(torch.isfinite(torch.tensor(totals)))
    assert min(totals[-5:]) < 0.5 * totals[0]


def test_eval_loss_and_metrics_with_an_image_without_boxes():
    model = tiny_yolo().eval()
    images, targets = batch(empty_second=True)
    det = model.heads["det"]
    with torch.no_grad():
        outputs = model(images)
        losses = det.loss(outputs["det"], det.select_targets(targets, "boxes"))
        metrics = det.make_metrics("test")
        det.update_metrics(metrics, outputs["det"], det.select_targets(targets, "boxes"))
        scalars, _ = det.summarize(metrics.compute())
    assert all(torch.isfinite(v) for v in losses.values()) and {"mAP", "mAP@0.5"} <= set(scalars)
    found = det.predict(outputs["det"])
    assert len(found) == 2 and all(len(d["boxes"]) > 0 for d in found)  # untrained: low scores above 0.001
    for image in found:
        assert (image["boxes"] >= 0).all() and (image["boxes"] <= SIZE).all()
        assert (image["scores"][:-1] >= image["scores"][1:]).all() and image["labels"].min() >= 1
        assert len(image["boxes"]) <= det.max_detections


def test_the_old_yolo_options_point_to_fcos():
    with pytest.raises(SpecError, match="has no option 'num_convs'.*now type: fcos"):
        build({"encoder": TINY_CSP, "decoder": {"name": "pafpn"},
               "heads": {"det": {"type": "yolo", "source": "decoder", "num_classes": 3, "num_convs": 1}}})


def test_describe_shows_the_branches():
    from edh.inspection.describe import describe_model

    rows = {r.role.strip(): r for r in describe_model(tiny_yolo(), (SIZE, SIZE)).rows}
    assert rows["det.box_branch"].macs > 0 and rows["det.cls_branch"].macs > 0
    assert rows["Head:det"].params == rows["det.box_branch"].params + rows["det.cls_branch"].params + 16


def test_short_training_run_then_eval_and_predict(tmp_path):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run
    from edh.workflows.evaluate import evaluate_run

    spec = parse_run_spec({
        "model": {"encoder": TINY_CSP, "decoder": {"name": "pafpn"},
                  "heads": {"objects": {"type": "yolo", "source": "decoder", "target": "boxes", "num_classes": 10,
                                        "prior_image_size": SIZE}}},
        "data": {"name": "scenes", "image_size": SIZE, "num_train": 16, "num_val": 4, "num_test": 4, "batch_size": 8},
        "train": {"epochs": 1, "lr": 0.002, "seed": 0},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}})
    run = train_run(spec, tmp_path / "run")
    evaluation = evaluate_run(run, "test", progress=False)
    assert {"mAP", "mAP@0.5"} <= set(evaluation.metrics["objects"])
    with torch.no_grad():
        found = run.model.heads["objects"].predict(run.model.eval()(torch.rand(2, 3, SIZE, SIZE))["objects"])
    assert all(len(d["boxes"]) > 0 and d["labels"].max() <= 10 for d in found)


@pytest.mark.slow
def test_export_with_and_without_nms_equals_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    from test_export import SCENES, _ops, make_run

    from edh.export.runs import export_run, onnx_run

    run = make_run({"model": {"encoder": TINY_CSP, "decoder": {"name": "pafpn"},
                              "heads": {"boxes": {"type": "yolo", "source": "decoder", "target": "boxes",
                                                  "score_thresh": 0.3, "num_classes": 10}}},
                    "data": SCENES}, tmp_path / "run")
    with torch.no_grad():  # spread the scores: an untrained head ties them all near its prior
        for layers in run.model.heads["boxes"].cls_branch:
            torch.nn.init.normal_(layers[-1].weight, std=0.3)
            torch.nn.init.normal_(layers[-1].bias, std=1.0)
    raw = export_run(run, out=tmp_path / "raw.onnx")
    names = [c.name for c in raw.checks["raw.onnx"]]
    assert names[:2] == ["boxes.cls_logits", "boxes.box_distribution"] and raw.max_abs_diff < 1e-4
    nms = export_run(run, out=tmp_path / "nms.onnx", nms=True)
    assert "NonMaxSuppression" in _ops(tmp_path / "nms.onnx") and "NonMaxSuppression" not in _ops(tmp_path / "raw.onnx")
    boxes = nms.checks["nms.onnx"][0]
    assert boxes.shape[0] > 0 and boxes.max_abs_diff < 1e-2
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        eager = run.model.heads["boxes"].predict(run.model(images)["boxes"])
    for path in (tmp_path / "raw.onnx", tmp_path / "nms.onnx"):
        backed = onnx_run(run, path).model
        found = backed.heads["boxes"].predict(backed(images)["boxes"])
        assert [len(d["boxes"]) for d in found] == [len(d["boxes"]) for d in eager]
        paired, other = run.model.heads["boxes"].align_predictions(eager, found)
        torch.testing.assert_close(other["boxes"], paired["boxes"], atol=1e-3, rtol=0)
