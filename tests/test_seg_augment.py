"""Joint augmentation (edh.data.augment): image, mask and boxes stay aligned; fills, crops, padded batches,
native sizes of image-masks, augmented scenes and the errors that name the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from edh.core.errors import SpecError
from edh.data.augment import PadCollate, augment_pipeline, parse_augment
from edh.data.base import build_data
from edh.data.scenes import visible_boxes

H, W = 32, 48


def _coordinate_sample():
    """An image whose channels are the x and y ramps of each pixel (bilinear keeps them exact) and 1, and a
    mask holding each pixel's own id: a mask pixel names the source pixel, the image where it came from."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    image = torch.stack([xs / W, ys / H, torch.ones(H, W)]).float()  # (3, H, W)
    return tv_tensors.Image(image), tv_tensors.Mask(ys * W + xs + 1)  # ids from 1; 0 is the fill


@pytest.mark.parametrize("steps, crop, tolerance", [
    ({"hflip": 1.0}, None, 0.0), ({"vflip": 1.0}, None, 0.0), ({}, (24, 40), 0.0), ({"rotate": 30}, None, 0.75),
    ({"scale": [0.5, 2.0]}, None, 0.75), ({"hflip": 0.5, "rotate": 20, "scale": [0.5, 2.0]}, (40, 56), 1.5),
])
def test_geometric_steps_keep_mask_on_its_pixels(steps, crop, tolerance):
    image, mask = _coordinate_sample()
    pipeline = augment_pipeline(steps, crop, mask_fill=0)
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, out_mask = pipeline(image, mask)
        assert out_mask.shape == (crop or (H, W)) and out_image.shape[-2:] == out_mask.shape
        inside = out_image[2] > 0.999  # pixels not blended with the outside
        assert inside.sum() > 0.15 * inside.numel() and (out_mask[inside] > 0).all()
        source_x, source_y = (out_mask - 1) % W, (out_mask - 1) // W
        assert (source_x - out_image[0] * W).abs()[inside].max() <= tolerance + 1e-4
        assert (source_y - out_image[1] * H).abs()[inside].max() <= tolerance + 1e-4
        assert ((out_mask == 0) <= (out_image[2] < 0.5 + 0.5 * bool(steps.get("rotate")))).all(), "fill: image 0"
    assert not torch.equal(out_mask, mask) or not steps


@pytest.mark.parametrize("steps, crop", [({"hflip": 1.0, "vflip": 1.0}, None), ({"rotate": 30}, None),
                                         ({"scale": [0.5, 2.0], "hflip": 0.5}, (32, 40))])
def test_boxes_follow_the_objects_of_the_mask(steps, crop):
    rects = [(20, 18, 30, 26), (34, 30, 46, 44), (22, 36, 30, 48)]  # x1, y1, x2, y2 on a 64 x 64 image
    mask = torch.zeros(64, 64, dtype=torch.int64)
    for index, (x1, y1, x2, y2) in enumerate(rects, 1):
        mask[y1:y2, x1:x2] = index
    boxes = tv_tensors.BoundingBoxes(torch.tensor(rects, dtype=torch.float32), format="XYXY", canvas_size=(64, 64))
    pipeline = augment_pipeline(steps, crop, mask_fill=255)
    dropped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out = pipeline({"image": tv_tensors.Image(torch.rand(3, 64, 64)), "mask": tv_tensors.Mask(mask),
                        "boxes": boxes, "labels": torch.tensor([1, 2, 3])})
        objects = torch.where(out["mask"] == 255, 0, out["mask"])
        seen, ids = visible_boxes(objects, 3)
        assert out["boxes"].canvas_size == tuple(out["mask"].shape) and len(out["boxes"]) == len(out["labels"])
        for box, label in zip(out["boxes"], out["labels"].tolist()):
            assert label - 1 in ids.tolist(), "a kept box has its object's pixels"
            assert (box - seen[ids.tolist().index(label - 1)]).abs().max() <= 1.0
        for lost in set(ids.tolist()) - {label - 1 for label in out["labels"].tolist()}:  # a sliver at the edge
            x1, y1, x2, y2 = seen[ids.tolist().index(lost)].tolist()
            assert min(x2 - x1, y2 - y1) <= 1
        dropped += 3 - len(out["labels"])
    assert (dropped > 0) == bool(crop), "the crop drops boxes of objects it leaves out, with their labels"


def test_rotation_corners_and_crop_padding_get_the_fill_values():
    image, mask = torch.rand(3, 16, 20) + 0.1, torch.ones(16, 20, dtype=torch.int64)
    rotate = augment_pipeline({"rotate": 45}, None, mask_fill=255)
    corners = 0
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, out_mask = rotate(tv_tensors.Image(image), tv_tensors.Mask(mask))
        outside = out_image[:, out_mask == 255]  # (3, P): 0, or at the edge partly blended (bilinear)
        assert set(out_mask.unique().tolist()) <= {1, 255} and (outside < 0.6).all()
        corners += bool((out_mask == 255).any() and (out_image.sum(0) == 0).any())
    assert corners >= 2, "pixels from outside the rotated image: mask 255, image 0"
    out_image, out_mask = augment_pipeline("none", (24, 40), mask_fill=7)(tv_tensors.Image(image),
                                                                          tv_tensors.Mask(mask))
    assert out_mask.shape == (24, 40) and (out_mask == 1).sum() == 16 * 20, "a smaller image is kept whole"
    assert ((out_mask == 7) == (out_image.sum(0) == 0)).all()


def test_pad_collate_pads_bottom_right_with_the_ignore_value():
    items = [(torch.ones(3, 5, 6), {"mask": torch.zeros(5, 6, dtype=torch.int64)}),
             (torch.ones(3, 7, 4), {"mask": torch.ones(7, 4, dtype=torch.int64)})]
    images, targets = PadCollate(255)(items)
    assert images.shape == (2, 3, 7, 6) and targets["mask"].shape == (2, 7, 6)
    assert (images[0, :, 5:] == 0).all() and (targets["mask"][0, 5:] == 255).all()
    assert (targets["mask"][0, :5] == 0).all()
    assert (targets["mask"][1, :, 4:] == 255).all() and (images[1, :, :, :4] == 1).all()
    with pytest.raises(ValueError, match="data.ignore_index"):
        PadCollate(None)(items)


def _folder(root, sizes):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"im{index}.png")
        Image.fromarray((np.arange(h * w).reshape(h, w) % 3).astype(np.uint8)).save(root / "masks" / f"im{index}.png")
    return str(root)


def test_image_masks_keep_native_sizes_crop_training_and_pad_val_with_255(tmp_path):
    sizes = [(20, 30), (40, 24), (16, 16), (36, 44), (24, 24), (30, 20), (28, 40), (18, 50)]
    root = _folder(tmp_path, sizes)
    with pytest.raises(SpecError, match=r"im\d\.png is \d+x\d+ and .*im\d\.png is \d+x\d+.*data\.image_size: N.*"
                                        r"data\.crop_size: N"):
        build_data("image-masks", {"root": root, "val_fraction": 0.25, "test_fraction": 0.25}, seed=0)
    bundle = build_data("image-masks", {"root": root, "crop_size": [24, 32], "val_fraction": 0.25,
                                        "test_fraction": 0.25, "augment": {"hflip": 0.5, "rotate": 10}}, seed=0)
    assert bundle.info.image_size is None and bundle.info.extra["head_defaults"]["mask"]["ignore_index"] == 255
    for index in range(len(bundle.train)):
        image, target = bundle.train[index]
        assert image.shape == (3, 24, 32) and target["mask"].shape == (24, 32)
        assert set(target["mask"].unique().tolist()) <= {0, 1, 2, 255}
    val = [bundle.val[i] for i in range(len(bundle.val))]
    assert {tuple(image.shape[-2:]) for image, _ in val} <= set(sizes), "val is neither cropped nor resized"
    images, targets = bundle.collate_fn(val)
    height, width = images.shape[-2:]
    for (image, target), mask in zip(val, targets["mask"]):
        h, w = image.shape[-2:]
        assert torch.equal(mask[:h, :w], target["mask"]) and (mask[h:] == 255).all() and (mask[:, w:] == 255).all()
    replayed = bundle.replay(bundle.val.sample_ids(), bundle.info)
    assert torch.equal(replayed[0][1]["mask"], val[0][1]["mask"])


def test_image_masks_resize_when_asked_and_keep_ignore_index(tmp_path):
    root = _folder(tmp_path, [(20, 30), (40, 24), (16, 16), (36, 44)])
    bundle = build_data("image-masks", {"root": root, "image_size": 16, "ignore_index": 9, "val_fraction": 0.25,
                                        "test_fraction": 0.25, "augment": "none"}, seed=0)
    assert bundle.collate_fn is None and bundle.info.extra["head_defaults"]["mask"]["ignore_index"] == 9
    assert bundle.train[0][0].shape == (3, 16, 16) and bundle.val[0][1]["mask"].shape == (16, 16)
    same = build_data("image-masks", {"root": _folder(tmp_path / "b", [(20, 30)] * 4), "val_fraction": 0.25,
                                      "test_fraction": 0.25}, seed=0)
    assert "ignore_index" not in same.info.extra["head_defaults"]["mask"], "no padding, no ignore value"
    assert same.train[0][0].shape == (3, 20, 30)


@pytest.mark.parametrize("augment, message", [
    ({"rotat": 10}, r"data\.augment\.rotat: unknown augmentation step; valid steps: hflip, vflip, scale, rotate, "
                    r"color, iou_crop, mosaic; did you mean 'rotate'\?"),
    ("flp", r"data\.augment: unknown preset 'flp'.*did you mean 'flip'\?"),
    ({"hflip": 1.5}, r"data\.augment\.hflip must be a probability \(0\.0 to 1\.0\), got 1\.5"),
    ({"scale": [2.0, 0.5]}, r"data\.augment\.scale must be \[low, high\] with low <= high"),
    ({"scale": 2}, r"data\.augment\.scale must be \[low, high\] resize factors"),
    ({"rotate": "a lot"}, r"data\.augment\.rotate must be an angle in degrees"),
])
def test_bad_augment_names_the_key_and_the_fix(augment, message):
    with pytest.raises(SpecError, match=message):
        parse_augment(augment)
    with pytest.raises(SpecError, match=message):
        build_data("scenes", {"num_train": 2, "num_val": 0, "num_test": 0, "augment": augment}, seed=0)


def test_bad_crop_size_and_color_on_four_channels_are_refused():
    with pytest.raises(SpecError, match=r"data\.crop_size must be a side N or \[h, w\].*got \[2, 3, 4\]"):
        build_data("scenes", {"num_train": 2, "num_val": 0, "num_test": 0, "crop_size": [2, 3, 4]}, seed=0)
    with pytest.raises(SpecError, match=r"data\.crop_size\[0\]: 0 is out of range"):
        build_data("scenes", {"num_train": 2, "num_val": 0, "num_test": 0, "crop_size": [0, 3]}, seed=0)
    with pytest.raises(SpecError, match=r"data\.augment\.color jitters 1- or 3-channel images.*4 channels"):
        augment_pipeline({"color": 0.2}, in_channels=4)


def test_augmented_scenes_recompute_boxes_labels_count_and_label():
    small = {"image_size": 40, "sprite_size": [10, 18], "objects": [2, 4], "num_train": 16, "num_val": 4,
             "num_test": 4, "overlap": True}
    plain = build_data("scenes", small, seed=0)
    bundle = build_data("scenes", {**small, "augment": {"hflip": 0.5, "rotate": 20, "scale": [0.6, 1.6],
                                                        "color": 0.2}, "crop_size": 32}, seed=0)
    assert plain.train.augment is None and bundle.val.augment is None and bundle.test.augment is None
    assert torch.equal(bundle.val[0][0], plain.val[0][0]), "val / test are never augmented"
    fewer = 0
    for index in range(len(bundle.train)):
        torch.manual_seed(index)
        image, targets = bundle.train[index]
        mask, boxes, labels = targets["mask"], targets["boxes"], targets["labels"]
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and len(labels) >= 1
        assert int(targets["count"]) == len(labels) == len(boxes)
        covered = torch.zeros_like(mask, dtype=torch.bool)
        for (x1, y1, x2, y2), label in zip(boxes.long().tolist(), labels.tolist()):
            inside = mask[y1:y2, x1:x2] == label  # tight: the object touches all four edges of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y1:y2, x1:x2] |= inside
        assert torch.equal(covered, mask > 0), "every object pixel lies in a box of its label"
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert int(targets["label"]) == int(labels[areas.argmax()]) - 1
        fewer += len(labels) < len(plain.train[index][1]["labels"])
        torch.manual_seed(index)
        assert torch.equal(bundle.train[index][0], image), "the item is fixed by torch's seed (resumable runs)"
    assert fewer > 0, "some crops leave objects out, and their boxes and labels go with them"
