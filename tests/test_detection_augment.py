"""Augmentation of detection data (boxes, labels and instance masks together): every step keeps each box
the tight box of its mask and each mask on its object's pixels; iou_crop; mosaic (tiling, clipping,
dropping, determinism); scenes' instance masks; coco's augment (training split only)."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from edh.core.errors import SpecError
from edh.data.augment import augment_pipeline, parse_augment
from edh.data.base import build_data
from edh.data.mosaic import MosaicDataset, tile_mosaic
from edh.data.scenes import SceneDataset, tight_boxes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # annToMask, NumPy 2

SIZE = 64
RECTS = [(6, 8, 20, 22), (30, 10, 50, 24), (12, 34, 28, 56), (38, 36, 58, 58)]  # x1, y1, x2, y2
GREYS = [0.2 + 0.15 * k for k in range(len(RECTS))]  # each object's grey in the image


def _sample(rects=RECTS, size=SIZE):
    """An image where object k is painted grey ``GREYS[k]`` on black, its box, label ``k + 1`` and mask."""
    image = torch.zeros(3, size, size)
    masks = torch.zeros(len(rects), size, size, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(rects):
        image[:, y1:y2, x1:x2] = GREYS[k]
        masks[k, y1:y2, x1:x2] = 1
    boxes = tv_tensors.BoundingBoxes(torch.tensor(rects, dtype=torch.float32), format="XYXY", canvas_size=(size, size))
    return {"image": tv_tensors.Image(image), "boxes": boxes, "labels": torch.arange(1, len(rects) + 1),
            "masks": tv_tensors.Mask(masks)}


def check_objects(image, boxes, labels, masks, tolerance, colours=True, greys=GREYS):
    """Each box is the tight box of its (non-empty) mask within ``tolerance`` pixels, and (``colours``) the
    image under the mask is mostly its object's grey (channel 0 of an image normalised with mean 0, std 1)."""
    assert len(boxes) == len(labels) == len(masks) and masks.shape[-2:] == image.shape[-2:]
    assert masks.dtype == torch.uint8 and set(masks.unique().tolist()) <= {0, 1}
    height, width = image.shape[-2:]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    for box, label, mask in zip(boxes, labels.tolist(), masks):
        assert mask.any(), f"object {label} kept a box {box.tolist()} but no mask pixel"
        assert (box - tight_boxes(mask[None].bool())[0]).abs().max() <= tolerance + 1e-4, (box, label)
        if colours:
            assert abs(float(image[0][mask.bool()].median()) - greys[label - 1]) < 0.03, f"mask {label} off its pixels"


STEPS = [({"hflip": 1.0}, 0.0), ({"vflip": 1.0}, 0.0), ({"rotate": 30}, 1.0), ({"scale": [0.5, 2.0]}, 1.0),
         ({"iou_crop": 1.0}, 1.0), ({"color": 0.3}, 0.0), ({"hflip": 0.5, "vflip": 0.5, "rotate": 15}, 1.0),
         ({"hflip": 0.5, "scale": [0.6, 1.5], "iou_crop": 0.5, "color": 0.2}, 1.0)]
# (rotation then a zoom would scale its rounding: the box of a rotated box is up to ~1 pixel off its mask's)


@pytest.mark.parametrize("steps, tolerance", STEPS)
def test_every_step_keeps_boxes_tight_on_masks_and_masks_on_their_pixels(steps, tolerance):
    pipeline = augment_pipeline(steps, detection=True)
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        out = pipeline(_sample())
        assert out["image"].shape == (3, SIZE, SIZE), "every step gives the item's size back"
        check_objects(out["image"], out["boxes"], out["labels"], out["masks"], tolerance, colours="color" not in steps)
        changed += not torch.equal(out["image"], _sample()["image"])
    assert changed >= 2


def test_iou_crop_drops_boxes_with_their_labels_and_masks():
    pipeline = augment_pipeline({"iou_crop": 1.0}, detection=True)
    fewer = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out = pipeline(_sample())
        assert out["image"].shape == (3, SIZE, SIZE) and len(out["masks"]) == len(out["labels"]) >= 1
        fewer += len(out["labels"]) < len(RECTS)
    assert fewer > 0, "a crop leaves objects out (their centre outside it), and their labels and masks go"


def test_detection_steps_need_boxes_and_are_named():
    assert parse_augment({"iou_crop": True, "mosaic": 0.25}).mosaic == 0.25
    with pytest.raises(SpecError, match=r"data\.augment\.iou_crop needs boxes.*Remove data\.augment\.iou_crop"):
        augment_pipeline({"iou_crop": 0.5})
    with pytest.raises(SpecError, match=r"data\.augment\.mosaic must be a probability \(0\.0 to 1\.0\), got 2"):
        parse_augment({"mosaic": 2})


def _item(rects, grey_offset=0, size=(SIZE, SIZE)):
    image = torch.zeros(3, *size)
    masks = torch.zeros(len(rects), *size, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(rects):
        image[:, y1:y2, x1:x2] = GREYS[grey_offset + k]
        masks[k, y1:y2, x1:x2] = 1
    labels = torch.arange(1, len(rects) + 1) + grey_offset
    return image, {"boxes": torch.tensor(rects, dtype=torch.float32).reshape(-1, 4), "labels": labels, "masks": masks,
                   "mask": (masks * labels.view(-1, 1, 1)).sum(0), "image_id": torch.tensor(grey_offset)}


def test_tile_mosaic_moves_clips_and_drops_objects():
    items = [_item([(40, 40, 60, 60), (2, 2, 10, 10)], 0), _item([(0, 30, 20, 50)], 2), _item([], 0),
             _item([(5, 5, 30, 30)], 3)]
    image, targets = tile_mosaic(items, (24, 32))  # centre y 24, x 32
    # item 0's bottom-right corner on the centre: it moves by (32 - 64, 24 - 64); its box at (2, 2) is cut away
    expected = torch.tensor([[8.0, 0.0, 28.0, 20.0], [32.0, 0.0, 52.0, 10.0], [37.0, 29.0, 62.0, 54.0]])
    assert image.shape == (3, SIZE, SIZE) and torch.equal(targets["boxes"], expected)
    assert targets["labels"].tolist() == [1, 3, 4] and targets["image_id"] == 0, "other targets: the first item's"
    check_objects(image, targets["boxes"], targets["labels"], targets["masks"], 0.0)
    assert torch.equal(targets["mask"], (targets["masks"] * targets["labels"].view(-1, 1, 1)).sum(0))
    assert (image[:, 24:, :32] == 0).all(), "the empty item leaves its quadrant 0"
    assert tile_mosaic([_item([(2, 2, 10, 10)], 0)] + [_item([], 0)] * 3, (24, 32))[1]["labels"].tolist() == [1], \
        "a mosaic without objects is the first item itself"


def test_tile_mosaic_of_items_of_other_sizes():
    items = [_item([(30, 20, 44, 30)], 0, (32, 48)), _item([(2, 70, 12, 78)], 1, (80, 40)),
             _item([(30, 2, 40, 12)], 2, (16, 40)), _item([(0, 0, 8, 8)], 3, (20, 20))]
    image, targets = tile_mosaic(items, (16, 24))  # the size of the first item
    assert image.shape == (3, 32, 48) and targets["masks"].shape[-2:] == (32, 48)
    assert targets["boxes"].tolist() == [[6, 4, 20, 14], [26, 6, 36, 14], [14, 18, 24, 28], [24, 16, 32, 24]]
    check_objects(image, targets["boxes"], targets["labels"], targets["masks"], 0.0)
    assert targets["labels"].tolist() == [1, 2, 3, 4]


SCENES = {"image_size": 48, "sprite_size": [12, 20], "objects": [1, 4], "num_train": 12, "num_val": 4,
          "num_test": 4, "overlap": True}


def check_scene_masks(image, targets):
    """Scene targets: one mask per box, the box its tight box, the mask on the class map's pixels of its label,
    the masks disjoint and covering every object pixel; ``count`` and ``label`` follow the boxes."""
    masks, boxes, labels, mask = targets["masks"], targets["boxes"], targets["labels"], targets["mask"]
    check_objects(image, boxes, labels, masks, 0.0, colours=False)
    assert torch.equal(tight_boxes(masks.bool()), boxes) and masks.shape[-2:] == image.shape[-2:]
    assert (mask[masks.sum(0) > 0] > 0).all() and torch.equal(masks.sum(0) > 0, mask > 0) and masks.sum(0).max() <= 1
    for label, instance in zip(labels.tolist(), masks.bool()):
        assert (mask[instance] == label).all()
    assert int(targets["count"]) == len(labels)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert int(targets["label"]) == int(labels[areas.argmax()]) - 1


@pytest.mark.parametrize("augment", ["none", {"hflip": 0.5, "rotate": 20, "scale": [0.6, 1.6], "iou_crop": 0.5}])
def test_scene_items_have_one_mask_per_box(augment):
    bundle = build_data("scenes", {**SCENES, "augment": augment, "crop_size": 40 if augment != "none" else None},
                        seed=0)
    assert bundle.info.targets["masks"] == "instance_segmentation"
    for split in (bundle.train, bundle.val):
        for index in range(len(split)):
            torch.manual_seed(index)
            check_scene_masks(*split[index])
    images, targets = bundle.collate_fn([bundle.val[0], bundle.val[1]])
    assert isinstance(targets["masks"], list) and targets["masks"][1].shape[-2:] == images.shape[-2:]


def test_scene_mosaic_is_tight_reproducible_and_training_only():
    plain = build_data("scenes", SCENES, seed=0)
    bundle = build_data("scenes", {**SCENES, "augment": {"mosaic": 1.0, "hflip": 0.5}}, seed=0)
    assert isinstance(bundle.train, MosaicDataset) and isinstance(bundle.val, SceneDataset)
    assert bundle.train.augment is not None and torch.equal(bundle.val[0][0], plain.val[0][0])
    more = 0
    for index in range(len(bundle.train)):
        torch.manual_seed(100 + index)
        image, targets = bundle.train[index]
        assert image.shape == (3, 48, 48)
        check_scene_masks(image, targets)
        more += len(targets["labels"]) > len(plain.train[index][1]["labels"])
        torch.manual_seed(100 + index)
        again = bundle.train[index]
        assert torch.equal(again[0], image) and torch.equal(again[1]["masks"], targets["masks"]), "seeded: same"
    assert more > 0, "a mosaic holds objects of several scenes"
    from edh.train.data_loading import SeededItems

    seeded = SeededItems(bundle.train, seed=3)
    assert torch.equal(seeded[(1, 2)][0], seeded[(1, 2)][0]) and not torch.equal(seeded[(1, 2)][0], seeded[(2, 2)][0])


def test_coco_augment_moves_boxes_and_masks_and_leaves_val_alone(tmp_path):
    from test_coco_masks import write_coco_with_masks

    rects = [(2, 1, 12, 9), (13, 9, 23, 19), (2, 11, 10, 19)]  # exact rectangles (RLE) on 24 x 20 images
    annotations = [{"image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "category_id": 1,
                    "segmentation": {"size": [20, 24], "counts": _rect_runs(x1, y1, x2, y2)}}
                   for image_id in (10, 11, 12, 13) for x1, y1, x2, y2 in rects]
    folder, path = write_coco_with_masks(tmp_path, annotations, images=4, colours=True)
    base = {"images": str(folder), "annotations": str(path), "val_annotations": str(path), "masks": True,
            "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    plain = build_data("coco", base, seed=0)
    bundle = build_data("coco", {**base, "augment": {"hflip": 0.5, "vflip": 0.5, "scale": [0.7, 1.4],
                                                       "iou_crop": 0.5, "mosaic": 0.5}}, seed=0)
    assert isinstance(bundle.train, MosaicDataset) and bundle.val.augment is None
    assert torch.equal(bundle.val[0][0], plain.val[0][0]), "validation items are never augmented"
    greys = torch.tensor([int(255 * g) / 255 for g in GREYS[:3]])  # as stored in the PNG
    for seed in range(10):
        torch.manual_seed(seed)
        image, target = bundle.train[seed % 4]
        assert image.shape == (3, 20, 24)
        check_objects(image, target["boxes"], target["labels"], target["masks"], 1.0, colours=False)
        for mask in target["masks"].bool():  # on the pixels of one object: many of its grey (edges are blended)
            share = ((image[0][mask][:, None] - greys).abs() < 0.02).float().mean(0)  # (3,) per object grey
            assert share.max() > 0.4, "the mask lies on an object's pixels"


def _rect_runs(x1, y1, x2, y2, height=20, width=24):
    """Uncompressed RLE runs (column-major, from background) of a rectangle."""
    mask = torch.zeros(height, width, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    flat, runs, value, run = mask.t().flatten().tolist(), [], 0, 0
    for pixel in flat:
        if pixel != value:
            runs.append(run)
            value, run = pixel, 0
        run += 1
    return runs + [run]


def test_coco_augment_and_mosaic_without_masks(tmp_path):
    from test_coco_masks import write_coco_with_masks

    folder, path = write_coco_with_masks(tmp_path, images=4)
    bundle = build_data("coco", {"images": str(folder), "annotations": str(path), "val_fraction": 0.25,
                                 "test_fraction": 0.0, "augment": {"mosaic": 1.0, "vflip": 0.5, "rotate": 10}}, seed=0)
    assert "masks" not in bundle.info.targets
    for seed in range(6):
        torch.manual_seed(seed)
        image, target = bundle.train[seed % len(bundle.train)]
        boxes = target["boxes"]
        assert "masks" not in target and image.shape == (3, 20, 24) and len(boxes) == len(target["labels"]) >= 1
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes[:, 2] <= 24).all() and (boxes[:, 3] <= 20).all()
    with pytest.raises(SpecError, match=r"data\.augment\.color jitters 1- or 3-channel images"):
        build_data("coco", {"images": str(folder), "annotations": str(path), "in_channels": 4,
                            "augment": {"color": 0.2}}, seed=0)
