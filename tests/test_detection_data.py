"""COCO JSON data (bad annotations reported by id), and a detector run end to end: train, eval
(mAP, mAP@0.5, mAP@0.75), predict (pictures + a COCO results JSON that COCOeval accepts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edh.data.base import build_data
from edh.data.coco import collate_detection
from edh.data.coco_json import CocoAnnotationError

CATEGORIES = [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]  # ids with gaps, as in real COCO


def write_coco(root: Path, count: int = 12, bad: bool = False) -> tuple[Path, Path]:
    """``count`` scene images (48x48) as PNG files + a COCO file; ``bad`` adds one annotation of each bad kind."""
    bundle = build_data("scenes", {"num_train": count, "num_val": 0, "num_test": 0, "image_size": 48,
                                   "sprite_size": [14, 20], "objects": [1, 2]}, seed=0)
    folder = root / "images"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        image, target = bundle.train[index]
        pixels = ((image * 0.15 + 0.19).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"scene_{index}.png")
        images.append({"id": 100 + index, "file_name": f"scene_{index}.png", "width": 48, "height": 48})
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + index, "iscrowd": 0,
                                "category_id": 3 if label % 2 else 7, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1)})
    if bad:
        images.append({"id": 999, "file_name": "gone.png", "width": 48, "height": 48})
        extra = [(901, 100, 3, [5, 5, -2, 4]), (902, 100, 3, [40, 40, 20, 20]), (903, 101, 42, [1, 1, 5, 5]),
                 (904, 999, 3, [1, 1, 5, 5]), (905, 555, 3, [1, 1, 5, 5])]
        annotations += [{"id": i, "image_id": im, "category_id": c, "bbox": b, "iscrowd": 0} for i, im, c, b in extra]
        annotations.append({"id": 906, "image_id": 102, "category_id": 7, "bbox": [1, 1, 9, 9], "iscrowd": 1})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return folder, path


def test_bad_annotations_are_skipped_with_their_ids(tmp_path, caplog):
    folder, path = write_coco(tmp_path, bad=True)
    with caplog.at_level(logging.WARNING, logger="edh"):
        bundle = build_data("coco", {"images": str(folder), "annotations": str(path)}, seed=0)
    text = caplog.text
    assert "skipped 5 bad annotations" in text
    for ann_id, reason in ((901, "negative width"), (902, "outside"), (903, "unknown category id 42"),
                           (904, "missing"), (905, "unknown image id")):
        assert f"annotation {ann_id} " in text and reason in text
    assert bundle.info.extra["coco_skipped"] == {"degenerate box": 1, "box outside image": 1, "unknown category": 1,
                                                 "missing image file": 1, "unknown image": 1}
    assert bundle.info.extra["coco_ignored"] == {"crowd": 1}
    assert bundle.info.class_names == ["three", "seven"] and bundle.info.extra["category_ids"] == [3, 7]
    every = [bundle.train[i][1] for i in range(len(bundle.train))] + [bundle.val[i][1] for i in range(len(bundle.val))] \
        + [bundle.test[i][1] for i in range(len(bundle.test))]
    assert len(every) == 12  # the image whose file is missing is left out
    for target in every:
        assert set(target["labels"].tolist()) <= {1, 2}
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all() and (target["boxes"] <= 48).all()


def test_strict_rejects_bad_annotations(tmp_path):
    folder, path = write_coco(tmp_path, bad=True)
    with pytest.raises(CocoAnnotationError, match="5 bad annotations") as error:
        build_data("coco", {"images": str(folder), "annotations": str(path), "strict": True}, seed=0)
    assert "annotation 902 (image 100, scene_0.png)" in str(error.value)


def test_missing_files_are_named(tmp_path):
    from edh.data.base import DataFilesMissingError

    with pytest.raises(DataFilesMissingError, match="does not exist"):
        build_data("coco", {"images": str(tmp_path), "annotations": str(tmp_path / "nope.json")}, seed=0)


def test_collate_pads_without_resizing():
    items = [(torch.ones(3, 30, 20), {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": torch.tensor([1]),
                                      "image_id": torch.tensor(1)}),
             (torch.ones(3, 24, 32), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                      "image_id": torch.tensor(2)})]
    images, targets = collate_detection(items)
    assert images.shape == (2, 3, 30, 32)
    assert images[0, :, :, 20:].abs().sum() == 0 and images[0, :, :30, :20].min() == 1
    assert isinstance(targets["boxes"], list) and targets["image_id"].tolist() == [1, 2]


@pytest.mark.slow
def test_detector_run_train_eval_predict_cocoeval(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from edh.cli import main

    folder, path = write_coco(tmp_path / "data", count=16)
    spec = {
        "model": {"encoder": {"name": "test_resnet"},
                  "decoder": {"name": "fpn", "out_channels": 16, "levels": [2, 3, 4], "extra": "none"},
                  "heads": {"objects": {"type": "fcos", "source": "decoder", "target": "boxes", "num_convs": 1,
                                        "score_thresh": 0.01}}},
        "data": {"name": "coco", "images": str(folder), "annotations": str(path), "batch_size": 4,
                 "val_fraction": 0.25, "test_fraction": 0.25},
        "train": {"epochs": 1, "lr": 0.001},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }
    (tmp_path / "run.yaml").write_text(json.dumps(spec))
    run_dir = tmp_path / "run"
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(run_dir)]) == 0
    resolved = (run_dir / "spec.yaml").read_text()
    assert "num_classes: 2" in resolved and "category_ids:" in resolved  # filled in from the data
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "mAP=" in printed and "mAP@0.5=" in printed and "mAP@0.75=" in printed
    pictures = tmp_path / "pictures"
    files = [str(folder / f"scene_{i}.png") for i in (0, 1, 2)]
    assert main(["predict", str(run_dir), *files, "--out", str(pictures)]) == 0
    assert all((pictures / f"scene_{i}.boxes.png").is_file() for i in (0, 1, 2))
    records = json.loads((pictures / "objects.json").read_text())
    assert records and {r["image_id"] for r in records} <= {100, 101, 102}
    assert {r["category_id"] for r in records} <= {3, 7}
    truth = COCO(str(path))
    evaluation = COCOeval(truth, truth.loadRes(str(pictures / "objects.json")), "bbox")
    evaluation.params.imgIds = [100, 101, 102]
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert len(evaluation.stats) == 12 and all(np.isfinite(evaluation.stats))
