"""Property-based tests (hypothesis) of edh's box utilities: post-processing, target checks,
rescaling, COCO conversion and the one-stage head's box decoding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from edh.heads.detection.drawing import scale_boxes
from edh.heads.detection.fcos import FCOSHead
from edh.ops.boxes import check_targets, filter_detections, to_xywh

SIZE = 64


@st.composite
def boxes(draw, max_count: int = 20, span: float = 80.0) -> torch.Tensor:
    """``(N, 4)`` valid xyxy boxes (x2 > x1, y2 > y1), some reaching past a 64x64 image."""
    count = draw(st.integers(0, max_count))
    coords = st.floats(-span / 4, span, allow_nan=False, width=32)
    sizes = st.floats(0.5, span / 2, allow_nan=False, width=32)
    rows = [(x, y, x + w, y + h) for x, y, w, h in
            (draw(st.tuples(coords, coords, sizes, sizes)) for _ in range(count))]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


@settings(max_examples=60, deadline=None)
@given(boxes(), st.data(), st.floats(0.0, 0.9), st.floats(0.1, 0.9), st.integers(1, 10))
def test_filter_detections_keeps_only_clipped_confident_non_overlapping_boxes(candidates, data, score_thresh,
                                                                            nms_thresh, max_detections):
    n = len(candidates)
    scores = torch.tensor(data.draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n)), dtype=torch.float32)
    labels = torch.tensor(data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)), dtype=torch.int64)
    found = filter_detections(candidates, scores, labels, (SIZE, SIZE), score_thresh, nms_thresh, max_detections)
    kept, kept_scores, kept_labels = found["boxes"], found["scores"], found["labels"]
    assert len(kept) <= min(max_detections, n) and kept.shape[-1] == 4
    assert ((kept >= 0) & (kept <= SIZE)).all()  # clipped to the image
    assert (kept_scores > score_thresh).all()
    assert (kept_scores[:-1] >= kept_scores[1:]).all()  # best first
    for label in kept_labels.unique():  # class-wise NMS: no two kept boxes of a class overlap past the threshold
        same = kept[kept_labels == label]
        overlap = box_iou(same, same).fill_diagonal_(0)
        assert (overlap <= nms_thresh + 1e-5).all()


@settings(max_examples=60, deadline=None)
@given(boxes(max_count=8), st.integers(1, 5))
def test_check_targets_accepts_valid_boxes_and_names_the_first_bad_one(valid, bad_index):
    labels = torch.ones(len(valid), dtype=torch.int64)
    clean = check_targets([{"boxes": valid, "labels": labels}], num_classes=1, batch_size=1)
    torch.testing.assert_close(clean[0]["boxes"], valid)
    broken = torch.cat([valid, torch.tensor([[10.0, 10.0, 10.0, 20.0]])])  # zero width
    with pytest.raises(ValueError, match=f"image 0, box {len(valid)} .* zero or negative width"):
        check_targets([{"boxes": broken, "labels": torch.ones(len(broken), dtype=torch.int64)}], 1, 1)
    with pytest.raises(ValueError, match=f"image 0, box 0 has label {1 + bad_index}, outside 1..1"):
        check_targets([{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1 + bad_index])}], 1, 1)


@settings(max_examples=60, deadline=None)
@given(boxes(), st.tuples(st.integers(8, 512), st.integers(8, 512)), st.tuples(st.integers(8, 512), st.integers(8, 512)))
def test_scale_boxes_round_trips_and_to_xywh_keeps_sizes(found, size_a, size_b):
    there = scale_boxes(found, size_a, size_b)
    torch.testing.assert_close(scale_boxes(there, size_b, size_a), found, atol=1e-3, rtol=1e-4)
    xywh = to_xywh(found)
    torch.testing.assert_close(xywh[:, :2], found[:, :2])
    torch.testing.assert_close(xywh[:, 2:], found[:, 2:] - found[:, :2])


@settings(max_examples=60, deadline=None)
@given(boxes(max_count=6), st.sampled_from([4.0, 8.0, 16.0]))
def test_fcos_decode_inverts_the_distance_encoding(targets, stride):
    centres = (targets[:, :2] + targets[:, 2:]) / 2  # a point inside each box
    distances = torch.cat([centres - targets[:, :2], targets[:, 2:] - centres], dim=1) / stride
    decoded = FCOSHead.decode(distances, centres, torch.full((len(targets),), stride))
    torch.testing.assert_close(decoded, targets, atol=1e-3, rtol=1e-5)
