"""The `scenes` dataset: exact masks, boxes and labels from the same rendering; determinism; errors."""

from __future__ import annotations

import pytest
import torch

from edh.data.base import build_data
from edh.data.scenes import collate_scenes, tight_boxes

SMALL = {"image_size": 40, "sprite_size": [10, 18], "num_train": 24, "num_val": 6, "num_test": 6}


def _check_scene(image, targets, num_classes):
    mask, boxes, labels = targets["mask"], targets["boxes"], targets["labels"]
    assert mask.dtype == torch.int64 and boxes.dtype == torch.float32 and labels.dtype == torch.int64
    assert mask.shape == image.shape[-2:] and boxes.shape == (len(labels), 4) and len(labels) >= 1
    assert mask.min() >= 0 and mask.max() < num_classes
    assert (labels >= 1).all() and (labels < num_classes).all()
    covered = torch.zeros_like(mask, dtype=torch.bool)
    for box, label in zip(boxes.long().tolist(), labels.tolist()):
        x1, y1, x2, y2 = box
        inside = mask[y1:y2, x1:x2] == label
        # tight box: the object's pixels touch all four edges of its box
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        covered[y1:y2, x1:x2] |= inside
    assert torch.equal(covered, mask > 0), "every object pixel lies in a box of its own label"
    masks = targets["masks"]  # one instance mask per box: its tight box is the box, its pixels the label's
    assert masks.dtype == torch.uint8 and masks.shape == (len(labels), *mask.shape)
    assert torch.equal(tight_boxes(masks.bool()), boxes) and torch.equal(masks.sum(0) > 0, mask > 0)
    assert all((mask[instance] == label).all() for instance, label in zip(masks.bool(), labels.tolist()))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert int(targets["label"]) == int(labels[areas.argmax()]) - 1


@pytest.mark.parametrize("overlap", [False, True])
def test_items_are_exact(overlap):
    bundle = build_data("scenes", {**SMALL, "objects": [1, 4], "overlap": overlap}, seed=3)
    num_classes = bundle.info.extra["head_defaults"]["mask"]["num_classes"]
    assert num_classes == 11 and bundle.info.extra["mask_class_names"][0] == "background"
    for split in (bundle.train, bundle.val, bundle.test):
        for index in range(len(split)):
            image, targets = split[index]
            assert image.shape == (3, 40, 40) and torch.isfinite(image).all()
            _check_scene(image, targets, num_classes)


def test_same_seed_same_scenes_other_seed_other_scenes():
    a = build_data("scenes", SMALL, seed=0)
    b = build_data("scenes", SMALL, seed=0)
    c = build_data("scenes", SMALL, seed=1)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.masks, b.test.masks)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images[:6], a.val.images), "splits are drawn independently"


def test_collate_keeps_variable_boxes_as_lists():
    bundle = build_data("scenes", {**SMALL, "objects": [1, 3]}, seed=0)
    items = [bundle.train[i] for i in range(8)]
    images, targets = bundle.collate_fn(items)
    assert bundle.collate_fn is collate_scenes
    assert images.shape == (8, 3, 40, 40) and targets["mask"].shape == (8, 40, 40) and targets["label"].shape == (8,)
    assert isinstance(targets["boxes"], list) and len(targets["boxes"]) == 8
    assert len({len(b) for b in targets["boxes"]}) > 1, "this seed gives scenes with different object counts"
    assert all(len(b) == len(l) for b, l in zip(targets["boxes"], targets["labels"]))


def test_grey_scenes_and_fixed_object_count():
    bundle = build_data("scenes", {**SMALL, "in_channels": 1, "objects": 2, "noise": 0.0}, seed=0)
    image, targets = bundle.train[0]
    assert image.shape == (1, 40, 40) and bundle.info.in_channels == 1
    assert all(len(bundle.train[i][1]["labels"]) <= 2 for i in range(len(bundle.train)))


def test_fashion_sprites_when_installed():
    from edh.data.base import DataFilesMissingError

    try:
        bundle = build_data("scenes", {**SMALL, "sprites": "fashion-mnist", "sprite_size": [16, 24]}, seed=0)
    except DataFilesMissingError as error:
        assert "dataset-fashion-mnist" in str(error)
        pytest.skip("Fashion-MNIST is not installed")
    assert bundle.info.class_names[0] == "T-shirt/top"
    _check_scene(*bundle.test[0], 11)


@pytest.mark.parametrize("options, message", [
    ({"sprite_size": [10, 50]}, "does not fit"),
    ({"sprites": "letters"}, "digits"),
    ({"objects": [3, 1]}, "objects"),
    ({"in_channels": 4}, "in_channels"),
])
def test_bad_options_say_what_to_fix(options, message):
    with pytest.raises(ValueError, match=message):
        build_data("scenes", {**SMALL, **options}, seed=0)
