"""The new detectors on a user's COCO JSON, end to end: a YOLOv8-style model and Mask R-CNN train
on a tiny COCO file (polygon and RLE masks, training augmentation with boxes and masks), evaluate
(box mAP; for Mask R-CNN also pycocotools ``segm`` mask mAP) and predict (COCO results with RLE)."""

from __future__ import annotations

import json

import pytest
import torch
from test_coco_masks import write_coco_with_masks
from test_yolo import TINY_CSP

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
AUGMENT = {"hflip": 0.5, "scale": [0.8, 1.2], "iou_crop": 0.3, "mosaic": 0.5, "color": 0.2}


def _coco(tmp_path, masks: bool) -> dict:
    folder, path = write_coco_with_masks(tmp_path, images=6, colours=True)
    return {"name": "coco", "images": str(folder), "annotations": str(path), "val_annotations": str(path),
            "masks": masks, "image_size": 32, "batch_size": 3, "augment": AUGMENT}


def _train(tmp_path, model: dict, data: dict):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run
    from edh.workflows.evaluate import evaluate_run

    spec = parse_run_spec({"model": model, "data": data, "train": {"epochs": 2, "lr": 0.002, "seed": 0},
                           "trainer": TRAINER})
    run = train_run(spec, tmp_path / "run")
    return run, evaluate_run(run, "val", progress=False).metrics["objects"]


def test_yolo_trains_and_evaluates_on_coco_json_with_augmentation(tmp_path):
    model = {"encoder": TINY_CSP, "decoder": {"name": "pafpn"},
             "heads": {"objects": {"type": "yolo", "source": "decoder", "target": "boxes", "prior_image_size": 32}}}
    run, metrics = _train(tmp_path, model, _coco(tmp_path, masks=False))
    assert run.model.heads["objects"].num_classes == 2  # filled in from the COCO categories
    assert {"mAP", "mAP@0.5", "mAP@0.75", "mAR@100"} <= set(metrics)


def test_mask_rcnn_trains_evaluates_and_predicts_rle_on_coco_json(tmp_path):
    from pycocotools import mask as mask_utils

    from edh.workflows.predict import predict_inputs

    head = {"type": "mask_rcnn", "source": "decoder", "target": "boxes", "representation_size": 32,
            "anchor_sizes": [[8], [16], [32]], "rpn_pre_nms_top_n": [100, 50], "rpn_post_nms_top_n": [50, 20],
            "box_batch_size_per_image": 32, "mask_layers": [8, 8], "mask_dim_reduced": 8, "score_thresh": 0.0,
            "max_detections": 5}
    model = {"encoder": {"name": "resnet18", "depth": 4}, "decoder": {"name": "fpn", "out_channels": 16, "levels": [1, 2, 3], "extra": "none"},
             "heads": {"objects": head}}
    run, metrics = _train(tmp_path, model, _coco(tmp_path, masks=True))
    assert {"mAP@0.5", "mask_mAP", "mask_mAP@0.5"} <= set(metrics)
    assert 0.0 <= metrics["mask_mAP@0.5"] <= 1.0
    image = next((tmp_path / "images").glob("*.png"))
    predict_inputs(run, [str(image)], tmp_path / "out")
    records = json.loads((tmp_path / "out" / "objects.json").read_text())
    assert records and all(r["image_id"] in range(10, 16) for r in records)  # ids from the run's COCO file
    decoded = mask_utils.decode({**records[0]["segmentation"],
                                 "counts": records[0]["segmentation"]["counts"].encode()})
    assert decoded.shape == (20, 24)  # at the image file's resolution, not the 32x32 input
    assert torch.tensor(decoded).max() <= 1
