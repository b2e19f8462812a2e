"""COCO instance masks (``data.masks: true``): polygons, uncompressed and compressed RLE decoded as
pycocotools' own ``annToMask`` does, resized with ``image_size``, padded by the collate; a malformed
segmentation is named by its annotation id and image file, skipped or refused with ``strict``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edh.data.base import build_data
from edh.data.coco_json import CocoAnnotationError
from edh.data.coco_masks import check_segmentation, rle_string_counts

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # annToMask, NumPy 2

H, W = 20, 24
CATEGORIES = [{"id": 1, "name": "thing"}, {"id": 5, "name": "other"}]


def _compressed(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed(mask: np.ndarray) -> dict:
    flat, runs, value, run = mask.flatten(order="F"), [], 0, 0
    for pixel in flat:
        if pixel != value:
            runs.append(run)
            value, run = pixel, 0
        run += 1
    return {"size": list(mask.shape), "counts": runs + [run]}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def write_coco_with_masks(root: Path, annotations: list[dict] | None = None, images: int = 3,
                          colours: bool = False) -> tuple[Path, Path]:
    """``images`` PNG files (H x W) + a COCO file. Default annotations: per image a polygon, two polygons of
    one object, an uncompressed RLE and a compressed RLE blob. With ``colours`` each object is painted in
    the image in grey ``0.2 + 0.15 * k`` (k: its order in the file), so a mask can be checked to lie on it."""
    folder = root / "images"
    folder.mkdir(parents=True)
    listed = [{"id": 10 + i, "file_name": f"im_{i}.png", "width": W, "height": H} for i in range(images)]
    if annotations is None:
        annotations = []
        for i in range(images):
            blob = np.zeros((H, W), np.uint8)
            blob[4 + i:12, 14:22 - i] = 1
            blob[6, 14] = 0  # not a rectangle
            ring = np.zeros((H, W), np.uint8)
            ring[12:19, 2:9] = 1
            ring[14:17, 4:7] = 0
            annotations += [
                {"segmentation": [[2.0, 2.0, 10.0, 2.0, 6.0, 9.0 + i]], "bbox": [2, 2, 8, 7 + i], "category_id": 1},
                {"segmentation": [[12.0, 14.0, 16.0, 14.0, 16.0, 18.0],
                                  [18.0, 12.0, 23.0, 12.0, 23.0, 18.0, 18.0, 18.0]],
                 "bbox": [12, 12, 11, 6], "category_id": 5},
                {"segmentation": _uncompressed(ring), "bbox": _bbox(ring), "category_id": 5},
                {"segmentation": _compressed(blob), "bbox": _bbox(blob), "category_id": 1},
            ]
            for ann in annotations[-4:]:
                ann["image_id"] = 10 + i
    for index, ann in enumerate(annotations):
        ann.setdefault("id", 100 + index)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", 1.0)
    rng = np.random.default_rng(0)
    for entry in listed:
        pixels = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
        if colours:
            from edh.data.coco_masks import decode_mask

            pixels[:] = 0
            for k, ann in enumerate(a for a in annotations if a["image_id"] == entry["id"]):
                pixels[decode_mask(ann["segmentation"], H, W).astype(bool)] = int(255 * (0.2 + 0.15 * k))
        Image.fromarray(pixels).save(folder / entry["file_name"])
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": listed, "annotations": annotations, "categories": CATEGORIES}))
    return folder, path


def _options(folder: Path, path: Path, **more) -> dict:
    return {"images": str(folder), "annotations": str(path), "val_annotations": str(path), "masks": True, **more}


def _items(dataset) -> list:
    return [dataset[i] for i in range(len(dataset))]


def test_masks_match_pycocotools_ann_to_mask(tmp_path):
    from pycocotools.coco import COCO

    folder, path = write_coco_with_masks(tmp_path)
    bundle = build_data("coco", _options(folder, path), seed=0)
    assert bundle.info.targets["masks"] == "instance_segmentation"
    truth = COCO(str(path))
    for image, target in _items(bundle.train) + _items(bundle.val):
        anns = truth.loadAnns(truth.getAnnIds(imgIds=[int(target["image_id"])]))
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(anns), H, W) == (len(target["boxes"]), H, W)
        for mask, ann in zip(masks, anns):
            assert torch.equal(mask, torch.from_numpy(truth.annToMask(ann))), f"annotation {ann['id']}"
        assert image.shape[-2:] == masks.shape[-2:]


def test_masks_follow_image_size_nearest_and_collate_pads_them(tmp_path):
    from pycocotools.coco import COCO

    folder, path = write_coco_with_masks(tmp_path)
    truth = COCO(str(path))
    bundle = build_data("coco", _options(folder, path, image_size=32), seed=0)
    image, target = bundle.val[0]
    anns = truth.loadAnns(truth.getAnnIds(imgIds=[int(target["image_id"])]))
    expected = F.interpolate(torch.stack([torch.from_numpy(truth.annToMask(a)) for a in anns])[None], size=(32, 32),
                             mode="nearest-exact")[0]
    assert image.shape == (3, 32, 32) and torch.equal(target["masks"], expected)
    native = build_data("coco", _options(folder, path), seed=0)
    small = (image[:, :16, :20], {**target, "masks": target["masks"][:, :16, :20]})
    images, targets = native.collate_fn([small, native.val[1]])
    assert images.shape == (2, 3, H, W) and isinstance(targets["masks"], list)
    assert targets["masks"][0].shape == (4, H, W) and (targets["masks"][0][:, 16:] == 0).all()
    assert torch.equal(targets["masks"][0][:, :16, :20], small[1]["masks"]), "padded at the bottom / right with 0"


def test_without_masks_segmentation_is_not_read(tmp_path):
    folder, path = write_coco_with_masks(tmp_path, [{"image_id": 10, "bbox": [1, 1, 5, 5], "category_id": 1,
                                                     "segmentation": "nonsense"}], images=1)
    bundle = build_data("coco", {"images": str(folder), "annotations": str(path), "val_fraction": 0.0,
                                 "test_fraction": 0.0}, seed=0)
    assert "masks" not in bundle.train[0][1] and "masks" not in bundle.info.targets


BAD = [  # (segmentation, kind, words in the reason)
    (None, "missing segmentation", "no segmentation"),
    ([], "malformed segmentation", "empty segmentation"),
    ([[1.0, 1.0, 5.0, 5.0]], "malformed segmentation", "has 4 values"),
    ([[1, 1, 5, 1, True, 5]], "malformed segmentation", "polygon 0 is"),
    ([[1.0, 1.0, 5.0, 1.0, "5", 5.0]], "malformed segmentation", "list of numbers"),
    ([[30.0, 1.0, 40.0, 1.0, 35.0, 9.0]], "segmentation outside image", "outside its 24x20 image"),
    ({"size": [H, W], "counts": [H * W - 3, 2]}, "malformed segmentation", "add up to 479 pixels"),
    ({"size": [H, W], "counts": [-1, H * W + 1]}, "malformed segmentation", "non-negative integers"),
    ({"size": [10, 10], "counts": [100]}, "malformed segmentation", "is not its image's [height, width]"),
    ({"counts": [H * W]}, "malformed segmentation", "RLE size None"),
    ({"size": [H, W], "counts": "not rle ~~"}, "malformed segmentation", "not a compressed RLE string"),
    ({"size": [H, W], "counts": "0"}, "malformed segmentation", "add up to 0 pixels"),
    ("polygon", "malformed segmentation", "expected polygons"),
]


@pytest.mark.parametrize("segmentation, kind, reason", BAD)
def test_a_bad_segmentation_is_named_skipped_or_refused_with_strict(tmp_path, caplog, segmentation, kind, reason):
    good = {"image_id": 10, "bbox": [1, 1, 5, 5], "category_id": 1, "segmentation": [[1.0, 1.0, 6.0, 1.0, 6.0, 6.0]]}
    bad = {"id": 7, "image_id": 11, "bbox": [2, 2, 5, 5], "category_id": 5}
    if segmentation is not None:
        bad["segmentation"] = segmentation
    folder, path = write_coco_with_masks(tmp_path, [good, bad], images=2)
    with caplog.at_level(logging.WARNING, logger="edh"):
        bundle = build_data("coco", _options(folder, path), seed=0)
    assert "annotation 7 (image 11, im_1.png): " in caplog.text and reason in caplog.text
    assert bundle.info.extra["coco_skipped"] == {kind: 2}, "the train and the val file (the same one) skip it"
    assert [len(t["masks"]) for _, t in _items(bundle.train)] == [1, 0]
    with pytest.raises(CocoAnnotationError, match=r"annotation 7 \(image 11, im_1\.png\)") as error:
        build_data("coco", _options(folder, path, strict=True), seed=0)
    assert f"1 {kind}" in str(error.value)


def test_a_crowd_annotation_is_left_out_before_its_segmentation_is_read(tmp_path):
    crowd = {"image_id": 10, "bbox": [1, 1, 5, 5], "category_id": 1, "iscrowd": 1, "segmentation": {"counts": "x"}}
    good = {"image_id": 10, "bbox": [1, 1, 5, 5], "category_id": 1, "segmentation": [[1.0, 1.0, 6.0, 1.0, 6.0, 6.0]]}
    folder, path = write_coco_with_masks(tmp_path, [crowd, good], images=1)
    bundle = build_data("coco", _options(folder, path, strict=True), seed=0)
    assert bundle.info.extra["coco_ignored"] == {"crowd": 2} and len(bundle.train[0][1]["masks"]) == 1


def test_compressed_rle_strings_parse_to_their_runs():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = (rng.random((7, 9)) < rng.random()).astype(np.uint8)
        assert rle_string_counts(_compressed(mask)["counts"]) == _uncompressed(mask)["counts"]
        assert check_segmentation(_compressed(mask), 9, 7) is None
    assert rle_string_counts("") == [] and rle_string_counts("a") is None, "a run cut short"
