"""Detection on tiles (``Head.tiling = "boxes"``: boxes shifted, cut ones dropped, merged by NMS or WBF),
the thresholds and caps ``describe`` / ``predict`` state, and the image ids of ``edh predict``'s records."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edh
from edh.core.features import FeatureSpec
from edh.heads.detection.base import DetectionHead
from edh.ops.tiling import (MergedPredictions, cut_by_border, merge_detections, predictions_of, tiled_forward,
                            weighted_box_fusion)
from test_export import make_run

FCOS = {"encoder": {"name": "test_resnet"}, "decoder": {"name": "fpn", "out_channels": 16},
        "heads": {"objects": {"type": "fcos", "source": "decoder", "target": "boxes", "score_thresh": 0.0}}}
SCENES = {"name": "scenes", "image_size": 32, "sprite_size": [10, 14], "num_train": 4, "num_val": 2, "num_test": 2,
          "batch_size": 2}


def _found(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


# ---- merging -------------------------------------------------------------------------------------
def test_nms_merge_keeps_the_best_of_each_class_and_caps_the_whole_image():
    found = _found([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8, 0.7, 0.6],
                   [1, 1, 2, 1])
    merged = merge_detections(found, "nms", iou=0.5)
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])  # the class-2 twin stays
    assert merged["labels"].tolist() == [1, 2, 1]
    assert len(merge_detections(found, "nms", 0.5, max_detections=2)["boxes"]) == 2


def test_weighted_box_fusion_averages_a_group_by_score():
    found = _found([[0, 0, 10, 10], [2, 0, 12, 10], [40, 40, 50, 50]], [0.75, 0.25, 0.5], [1, 1, 1])
    boxes, scores, labels = weighted_box_fusion(found["boxes"], found["scores"], found["labels"], iou=0.5)
    torch.testing.assert_close(boxes[0], torch.tensor([0.5, 0.0, 10.5, 10.0]))  # 0.75 * 0 + 0.25 * 2
    assert scores.tolist() == pytest.approx([0.5, 0.5]) and labels.tolist() == [1, 1]
    merged = merge_detections(found, "wbf", 0.5, max_detections=1)
    assert len(merged["boxes"]) == 1
    empty = weighted_box_fusion(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert [len(t) for t in empty] == [0, 0, 0]
    with pytest.raises(ValueError, match="nms, wbf"):
        merge_detections(found, "soft")


def test_a_box_cut_by_an_inner_border_is_dropped_only_inside_the_shared_strip():
    boxes = torch.tensor([[20.0, 5, 32, 15],   # touches the right border, inside the 16-px strip: cut
                          [10.0, 5, 32, 15],   # touches it but reaches out of the strip: kept
                          [0.0, 5, 8, 15],     # touches the left border (the image's edge here): kept
                          [5.0, 20, 15, 32]])  # touches the bottom border, inside the strip: cut
    cut = cut_by_border(boxes, (0, 0, 32, 32), (64, 64), (16, 16))
    assert cut.tolist() == [True, False, False, True]
    assert not cut_by_border(boxes, (32, 32, 32, 32), (64, 64), (16, 16))[[0, 3]].any()  # image edges there


class BrightBoxes(DetectionHead):
    """A detector stand-in: per image, one box around the pixels above 0.5 (score 0.9, label 1)."""

    def __init__(self) -> None:
        super().__init__(FeatureSpec("pyramid", (1,), (1,)), num_classes=1)

    def predict(self, outputs: torch.Tensor, **meta):
        found = []
        for image in outputs:  # (1, h, w)
            ys, xs = torch.where(image[0] > 0.5)
            boxes = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]).float() if len(xs) else torch.zeros(0, 4)
            found.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.9),
                          "labels": torch.ones(len(boxes), dtype=torch.int64)})
        return found


@pytest.mark.parametrize("merge", ["nms", "wbf"])
def test_tiles_give_the_whole_object_once(merge):
    images = torch.zeros(1, 1, 100, 90)
    images[0, 0, 30:50, 40:58] = 1.0  # one object, 18 x 20 px, seen cut by many tiles
    calls = []
    model = lambda tiles: calls.append(tiles.shape) or {"objects": tiles}  # noqa: E731
    outputs = tiled_forward(model, images, {"objects": BrightBoxes()}, 32, 0.75, tiles_per_batch=5, merge=merge)
    merged = outputs["objects"]
    assert isinstance(merged, MergedPredictions) and len(merged.predictions) == 1
    assert merged.predictions[0]["boxes"].tolist() == [[40.0, 30.0, 58.0, 50.0]]
    assert len(calls) > 1 and all(shape[0] <= 5 and shape[-2:] == (32, 32) for shape in calls)
    assert predictions_of(BrightBoxes(), merged) is merged.predictions


def test_a_detector_tiled_gives_boxes_in_image_pixels_and_a_tile_no_smaller_than_the_image_runs_whole():
    torch.manual_seed(0)
    model = edh.build(FCOS | {"heads": {"objects": {**FCOS["heads"]["objects"], "num_classes": 3,
                                                    "max_detections": 7}}}, pretrained=False).eval()
    head = model.heads["objects"]
    images = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        whole = model(images)
        same = tiled_forward(model, images, model.tasks(), 80)
        assert torch.equal(same["objects"]["cls_logits"], whole["objects"]["cls_logits"])
        tiled = tiled_forward(model, images, model.tasks(), 32, 0.5, merge="wbf")["objects"].predictions
    assert len(tiled) == 2
    for found in tiled:
        assert 0 < len(found["boxes"]) <= 7 and found["scores"].diff().le(0).all()
        assert found["boxes"][:, [0, 2]].max() <= 80 and found["boxes"][:, [1, 3]].max() <= 48
        assert found["boxes"].min() >= 0
    metrics = head.make_metrics()
    head.update_metrics(metrics, MergedPredictions(tiled), {"boxes": [torch.tensor([[0.0, 0, 10, 10]])] * 2,
                                                            "labels": [torch.tensor([1])] * 2})
    assert 0 <= float(metrics.compute()["map"]) <= 1


def test_a_multitask_model_blends_its_masks_and_merges_its_boxes_and_a_counter_is_refused():
    heads = {"objects": {**FCOS["heads"]["objects"], "num_classes": 2},
             "mask": {"type": "segmentation", "source": "decoder", "num_classes": 3}}
    model = edh.build(FCOS | {"heads": heads}, pretrained=False).eval()
    with torch.no_grad():
        outputs = tiled_forward(model, torch.randn(1, 3, 48, 48), model.tasks(), 32, 0.25)
    assert outputs["mask"].shape == (1, 3, 48, 48) and isinstance(outputs["objects"], MergedPredictions)
    counted = edh.build(FCOS | {"heads": {**heads, "count": {"type": "regression", "source": "encoder"}}},
                        pretrained=False)
    with pytest.raises(ValueError, match=r"'count' \(RegressionHead, tiling None\).*--heads objects mask"):
        tiled_forward(counted, torch.randn(1, 3, 48, 48), counted.tasks(), 32)


def test_box_merging_refuses_predictions_it_cannot_stitch():
    class WithMasks(BrightBoxes):
        def predict(self, outputs, **meta):
            return [{**found, "masks": torch.zeros(len(found["boxes"]), 4, 4)} for found in super().predict(outputs)]

    with pytest.raises(ValueError, match=r"'objects' declares tiling 'boxes'.*\['masks'\].*tiling None"):
        tiled_forward(lambda t: {"objects": t}, torch.ones(1, 1, 40, 40), {"objects": WithMasks()}, 32)


# ---- caps and thresholds stated --------------------------------------------------------------------
def test_describe_shows_the_detection_settings():
    model = edh.build(FCOS | {"heads": {"objects": {**FCOS["heads"]["objects"], "num_classes": 2,
                                                    "max_detections": 9}}}, pretrained=False)
    row = next(r for r in model.describe((32, 32)).rows if r.role == "Head:objects")
    assert row.settings == {"score_thresh": 0.0, "nms_thresh": 0.6, "max_detections": 9}
    assert "max_detections 9" in model.describe((32, 32)).render()
    with pytest.raises(ValueError, match="max_detections is a number"):
        model.heads["objects"].set_prediction_settings(max_detections=0)
    with pytest.raises(ValueError, match="no prediction setting top_k"):
        model.heads["objects"].set_prediction_settings(top_k=3)


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    model = FCOS | {"heads": {"objects": {**FCOS["heads"]["objects"], "num_classes": 10}}}
    return make_run({"model": model, "data": SCENES}, tmp_path_factory.mktemp("tiled-detection") / "fcos")


def _image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_states_its_settings_and_says_when_an_image_reached_the_cap(det_run, tmp_path, caplog):
    from edh.workflows.predict import predict_inputs

    files = [_image(tmp_path / "big.png", 72, 64), _image(tmp_path / "other.png", 40, 40, 1)]
    head = det_run.model.heads["objects"]
    before = head.max_detections
    try:
        with caplog.at_level(logging.INFO, logger="edh"):
            results, _ = predict_inputs(det_run, files, tmp_path / "out", tile=32, overlap=0.25,
                                        settings={"max_detections": 2}, merge="wbf")
    finally:
        head.set_prediction_settings(max_detections=before)
    messages = [r.getMessage() for r in caplog.records]
    stated = [m for m in messages if "predicts with" in m]
    assert len(stated) == 1 and "max_detections 2" in stated[0] and "whole image" in stated[0]
    capped = [m for m in messages if "= head 'objects' max_detections" in m]
    assert any(m.startswith("image big.png: 2 detections") for m in capped) and "--max-detections" in capped[0]
    assert all(r.lines["objects"].startswith("2 boxes") for r in results)
    records = json.loads((tmp_path / "out" / "objects.json").read_text())
    assert {r["image_id"] for r in records} == {"big.png", "other.png"}  # no id: the file name, not 0
    warned = [m for m in messages if "have no image id" in m]
    assert len(warned) == 1 and "big.png, other.png" in warned[0] and "--image-ids" in warned[0]


def test_image_ids_come_from_the_users_mapping_or_coco_file_then_numeric_stems(det_run, tmp_path, caplog):
    from edh.workflows.predict import image_ids_for, predict_inputs, read_image_ids

    files = [_image(tmp_path / "a.png", 32, 32), _image(tmp_path / "0042.png", 32, 32, 1),
             _image(tmp_path / "b.png", 32, 32, 2)]
    (tmp_path / "ids.json").write_text(json.dumps({"a.png": 7}))
    with caplog.at_level(logging.WARNING, logger="edh"):
        predict_inputs(det_run, files, tmp_path / "out", image_ids=tmp_path / "ids.json")
    records = json.loads((tmp_path / "out" / "objects.json").read_text())
    assert {r["image_id"] for r in records} == {7, 42, "b.png"}
    warned = [r.getMessage() for r in caplog.records if "have no image id" in r.getMessage()]
    assert len(warned) == 1 and ": b.png." in warned[0] and "not in --image-ids" in warned[0]
    coco = {"images": [{"id": 5, "file_name": "photos/b.png"}], "annotations": [], "categories": []}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert read_image_ids(tmp_path / "coco.json") == {"b.png": 5}
    ids, unmatched = image_ids_for(files, det_run.info, tmp_path / "coco.json")
    assert ids == {"a.png": "a.png", "0042.png": 42, "b.png": 5} and unmatched == ["a.png"]
    (tmp_path / "bad.json").write_text(json.dumps({"a.png": "seven"}))
    with pytest.raises(ValueError, match=r"'a.png' has image id 'seven'.*whole numbers"):
        read_image_ids(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="give --out DIR"):
        predict_inputs(det_run, files, image_ids=tmp_path / "ids.json")


def test_cli_tiled_detection_options_and_errors(det_run, tmp_path, cli, capsys):
    path = str(_image(tmp_path / "wide.png", 40, 90))
    assert cli(["predict", str(det_run.path), path, "--tile", "32", "--overlap", "0.5", "--merge", "wbf",
                "--tiles-per-batch", "8", "--max-detections", "3", "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "\tobjects: 3 boxes" in captured.out and "max_detections 3" in captured.err
    assert cli(["predict", str(det_run.path), path, "--score-thresh", "1.0"]) == 0
    assert "\tobjects: no detections" in capsys.readouterr().out  # no score is above 1
    assert cli(["predict", str(det_run.path), path, "--merge", "nms"]) == 2
    assert "give --tile N" in capsys.readouterr().err
    assert cli(["eval", str(det_run.path), "--tile", "16"]) == 0 and "mAP=" in capsys.readouterr().out


def test_max_detections_on_a_run_without_detection_is_refused(tmp_path, cli, capsys):
    unet = {"encoder": {"name": "test_resnet"}, "decoder": {"name": "unet", "decoder_channels": [8, 8, 8, 8, 8]},
            "heads": {"mask": {"type": "segmentation", "source": "decoder"}}}
    run = make_run({"model": unet, "data": SCENES}, tmp_path / "unet")
    path = str(_image(tmp_path / "a.png", 32, 32))
    assert cli(["predict", str(run.path), path, "--max-detections", "5"]) == 2
    assert "no head of this run has it" in capsys.readouterr().err
    assert cli(["predict", str(run.path), path, "--score-thresh", "0.5"]) == 2
    assert "no head of this run has it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_code:  # argparse refuses the value itself
        cli(["predict", str(run.path), path, "--score-thresh", "1.5"])
    assert exit_code.value.code == 2 and "must be in [0, 1]" in capsys.readouterr().err
    assert cli(["predict", str(run.path), path, "--tile", "16", "--merge", "wbf"]) == 2
    assert "drop --merge" in capsys.readouterr().err
