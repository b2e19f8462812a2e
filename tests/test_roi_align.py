"""edh.ops.roi_align: the embedding_bag RoIAlign gives torchvision's values and gradients."""

from collections import OrderedDict

import pytest
import torch
import torchvision

from edh.ops.roi_align import MultiScaleRoIAlign, multiscale_roi_align

IMAGE = (96, 128)  # height, width
STRIDES = (4, 8, 16, 32)


def pyramid(channels_last: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    levels = [torch.randn(2, 5, IMAGE[0] // s, IMAGE[1] // s) for s in STRIDES]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return [f.to(memory_format=memory_format).requires_grad_() for f in levels]


def regions() -> list[torch.Tensor]:
    """Boxes of every level's size, thin ones, one past the image edge, one of zero size."""
    torch.manual_seed(1)
    out = []
    for count in (40, 25):
        corner = torch.rand(count, 2) * torch.tensor([IMAGE[1], IMAGE[0]])
        extent = torch.rand(count, 2) ** 3 * torch.tensor([IMAGE[1], IMAGE[0]])
        out.append(torch.cat([corner, corner + extent], dim=1))
    out[0][:3] = torch.tensor([[-20.0, -10.0, 150.0, 110.0], [120.0, 2.0, 127.9, 95.0], [10.0, 10.0, 10.0, 10.0]])
    return out


def named(features: list[torch.Tensor]) -> OrderedDict:
    return OrderedDict((str(i), f) for i, f in enumerate(features))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_values_and_gradients_match_torchvision(channels_last: bool, sampling_ratio: int) -> None:
    names = [str(i) for i in range(len(STRIDES))]
    ours_module = MultiScaleRoIAlign(names, 7, sampling_ratio)
    theirs_module = torchvision.ops.MultiScaleRoIAlign(names, 7, sampling_ratio)
    features, boxes = pyramid(channels_last), regions()
    ours = ours_module(named(features), boxes, IMAGE)
    theirs = theirs_module(named(features), boxes, [IMAGE] * 2)
    assert ours.shape == theirs.shape == (65, 5, 7, 7)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    upstream = torch.randn_like(theirs)
    ours_grads = torch.autograd.grad(ours, features, upstream)
    theirs_grads = torch.autograd.grad(theirs, features, upstream)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in ours_grads[1:])  # the regions spread over several levels


def test_aligned_single_level_matches_roi_align() -> None:
    feature = pyramid(False)[0]
    boxes = regions()
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    levels = torch.zeros(len(rois), dtype=torch.long)
    ours = multiscale_roi_align([feature], boxes, levels, [0.25], 5, 2, aligned=True)
    theirs = torchvision.ops.roi_align(feature, rois, 5, spatial_scale=0.25, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_no_regions_and_one_image_without_regions() -> None:
    module = MultiScaleRoIAlign(["0", "1"], 7, 2)
    features = pyramid(False)[:2]
    assert module(named(features), [torch.zeros(0, 4), torch.zeros(0, 4)], IMAGE).shape == (0, 5, 7, 7)
    boxes = [torch.zeros(0, 4), regions()[1]]
    theirs = torchvision.ops.MultiScaleRoIAlign(["0", "1"], 7, 2)(named(features), boxes, [IMAGE] * 2)
    torch.testing.assert_close(module(named(features), boxes, IMAGE), theirs, atol=1e-5, rtol=1e-4)


def test_adaptive_sampling_and_tracing_use_torchvision() -> None:
    names = [str(i) for i in range(len(STRIDES))]
    features, boxes = [f.detach() for f in pyramid(False)], regions()
    theirs = torchvision.ops.MultiScaleRoIAlign(names, 7, 0)(named(features), boxes, [IMAGE] * 2)
    assert torch.equal(MultiScaleRoIAlign(names, 7, 0)(named(features), boxes, IMAGE), theirs)
    module = MultiScaleRoIAlign(names, 7, 2)
    graph = torch.jit.trace(lambda *f: module(named(list(f)), boxes, IMAGE), tuple(features), check_trace=False).graph
    assert "roi_align" in str(graph) and "embedding_bag" not in str(graph)


def test_bfloat16_close_to_float32() -> None:
    names = [str(i) for i in range(len(STRIDES))]
    module = MultiScaleRoIAlign(names, 7, 2)
    features, boxes = pyramid(True), regions()
    full = module(named(features), boxes, IMAGE)
    low = [f.detach().bfloat16().requires_grad_() for f in features]
    half = module(named(low), boxes, IMAGE)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full.detach(), atol=0.05, rtol=0.02)
    upstream = torch.randn_like(full)
    grads = torch.autograd.grad(full, features, upstream)
    low_grads = torch.autograd.grad(half, low, upstream.bfloat16())  # summed in float32, then rounded
    for a, b in zip(grads, low_grads):
        assert b.dtype == torch.bfloat16
        torch.testing.assert_close(b.float(), a, atol=0.05, rtol=0.02)
