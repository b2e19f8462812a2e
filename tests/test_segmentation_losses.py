"""The segmentation head's losses: smp's values, ignore_index, weighted sums, binary mode, kernel size, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import edh
from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.heads.segmentation import SegmentationHead
from edh.heads.segmentation_losses import LOSS_NAMES, binary_cross_entropy

SPEC = FeatureSpec("pyramid", (8,), (1,))


def _head(**options) -> SegmentationHead:
    return SegmentationHead(SPEC, **{"num_classes": 3, **options})


def _problem(binary: bool, seed: int = 0):
    """Random logits and masks with every class present: ``(2, K, 12, 10)``, ``(2, 12, 10)``."""
    generator = torch.Generator().manual_seed(seed)
    classes = 2 if binary else 3
    logits = torch.randn(2, 1 if binary else classes, 12, 10, generator=generator)
    masks = torch.randint(0, classes, (2, 12, 10), generator=generator)
    return logits, masks


@pytest.mark.parametrize("binary", [False, True])
def test_each_loss_is_smps_value(binary):
    from segmentation_models_pytorch import losses

    mode = "binary" if binary else "multiclass"
    logits, masks = _problem(binary)
    options = {"focal": {"gamma": 1.5, "alpha": 0.25}, "tversky": {"alpha": 0.2, "beta": 0.8, "gamma": 1.3},
               "lovasz": {"per_image": True}}
    expected = {
        "dice": losses.DiceLoss(mode)(logits, masks),
        "jaccard": losses.JaccardLoss(mode)(logits, masks),
        "focal": losses.FocalLoss(mode, alpha=0.25, gamma=1.5)(logits, masks),
        "tversky": losses.TverskyLoss(mode, alpha=0.2, beta=0.8, gamma=1.3)(logits, masks),
        "lovasz": losses.LovaszLoss(mode, per_image=True)(logits, masks),
        # binary ce is BCE: the same as cross-entropy over the two logits [0, x]
        "ce": F.cross_entropy(torch.cat([torch.zeros_like(logits), logits], 1) if binary else logits, masks),
    }
    for name in LOSS_NAMES:
        head = _head(num_classes=2 if binary else 3, binary=binary, loss=name,
                     loss_options={name: options[name]} if name in options else None)
        (value,) = head.loss(logits, masks).values()
        torch.testing.assert_close(value, expected[name], msg=name)
    # the papers' defaults where smp's differ: Tversky alpha 0.3 / beta 0.7
    default = _head(num_classes=2 if binary else 3, binary=binary, loss="tversky").loss(logits, masks)["tversky"]
    torch.testing.assert_close(default, losses.TverskyLoss(mode, alpha=0.3, beta=0.7)(logits, masks))


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_ignored_pixels_change_no_loss(name, binary):
    """Masking the top rows with ignore_index gives the loss of the other rows alone, whatever the
    logits there (class weights included, where the loss takes them)."""
    logits, masks = _problem(binary, seed=1)
    weights = [0.5, 2.0] if binary else [0.5, 1.0, 3.0]
    weights = None if name not in ("ce", "focal") or (binary and name == "focal") else weights
    head = _head(num_classes=2 if binary else 3, binary=binary, loss=name, ignore_index=255, class_weights=weights)
    ignored = masks.clone()
    ignored[:, :4] = 255
    other = logits.clone()
    other[:, :, :4] = torch.randn_like(other[:, :, :4]) * 10
    (masked,) = head.loss(logits, ignored).values()
    (masked_other,) = head.loss(other, ignored).values()
    (rest,) = head.loss(logits[:, :, 4:], masks[:, 4:]).values()
    torch.testing.assert_close(masked, rest, msg=name)
    torch.testing.assert_close(masked_other, rest, msg=name)
    everything = torch.full_like(masks, 255)  # no pixel to learn from: zero, not NaN, and backward runs
    logits.requires_grad_(True)
    (nothing,) = head.loss(logits, everything).values()
    nothing.backward()
    assert nothing == 0 and torch.isfinite(logits.grad).all()


def test_class_weights_reach_ce_bce_and_focal():
    from segmentation_models_pytorch import losses

    logits, masks = _problem(False)
    head = _head(loss="ce+focal", class_weights=[0.2, 1.0, 4.0])
    terms = head.loss(logits, masks)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, masks, weight=torch.tensor([0.2, 1.0, 4.0])))
    torch.testing.assert_close(terms["focal"], losses.FocalLoss("multiclass", class_weights=[0.2, 1.0, 4.0])(logits, masks))
    assert terms["ce"] != _head(loss="ce").loss(logits, masks)["ce"]
    logits, masks = _problem(True)
    weight = torch.tensor([0.3, 2.0])
    two = torch.cat([torch.zeros_like(logits), logits], 1)
    torch.testing.assert_close(binary_cross_entropy(logits, masks, weight), F.cross_entropy(two, masks, weight=weight))


def test_a_weighted_sum_is_the_weighted_terms():
    logits, masks = _problem(False, seed=2)
    alone = {name: _head(loss=name).loss(logits, masks)[name] for name in ("ce", "dice", "lovasz")}
    terms = _head(loss={"ce": 1.0, "dice": 0.5, "lovasz": 2}).loss(logits, masks)
    assert list(terms) == ["ce", "dice", "lovasz"]
    for name, weight in (("ce", 1.0), ("dice", 0.5), ("lovasz", 2.0)):
        torch.testing.assert_close(terms[name], weight * alone[name])
    same = _head(loss="ce+dice").loss(logits, masks)
    assert same.keys() == {"ce", "dice"} and all(torch.equal(same[k], alone[k]) for k in same)


def test_losses_are_float32_under_bf16():
    logits, masks = _problem(False)
    terms = _head(loss="ce+dice+focal+lovasz").loss(logits.bfloat16(), masks)
    assert all(value.dtype == torch.float32 for value in terms.values())
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits.bfloat16().float(), masks))


@pytest.mark.parametrize("binary", [False, True])
def test_every_loss_learns_a_tiny_problem(binary):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 12, 12, generator=generator)
    classes = 2 if binary else 3
    masks = torch.einsum("bchw,kc->bkhw", features, torch.randn(classes, 8, generator=generator)).argmax(1)
    for name in LOSS_NAMES:
        torch.manual_seed(0)
        head = _head(num_classes=classes, binary=binary, loss=name)
        optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
        values = []
        for _ in range(15):
            loss = sum(head.loss(head([features]), masks).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            values.append(loss.item())
        assert values[-1] < 0.8 * values[0], (name, values)


def test_binary_head_trains_and_predicts_like_two_classes():
    model = edh.build({"encoder": {"name": "test_resnet"}, "decoder": {"name": "unet", "decoder_channels": [16, 8, 8, 8, 8]},
                       "heads": {"mask": {"type": "segmentation", "source": "decoder", "num_classes": 2, "binary": True,
                                          "kernel_size": 3, "loss": {"ce": 1, "dice": 0.5}}}}, pretrained=False)
    head = model.heads["mask"]
    assert head.conv.out_channels == 1 and head.conv.kernel_size == (3, 3)
    images, masks = torch.randn(2, 3, 32, 48), torch.randint(0, 2, (2, 32, 48))
    logits = model(images)["mask"]
    assert logits.shape == (2, 1, 32, 48)
    terms = head.loss(logits, masks)
    assert terms.keys() == {"ce", "dice"}
    sum(terms.values()).backward()
    assert head.conv.weight.grad is not None and model.encoder.parameters().__next__().grad is not None
    prediction = head.predict(logits.detach())
    p = logits.detach().sigmoid()[:, 0]
    assert prediction["mask"].shape == (2, 32, 48) and prediction["probs"].shape == (2, 2, 32, 48)
    assert torch.equal(prediction["mask"], (p >= 0.5).long())
    torch.testing.assert_close(prediction["probs"][:, 1], p)
    torch.testing.assert_close(prediction["probs"].sum(1), torch.ones(2, 32, 48))
    metrics = head.make_metrics("test")
    head.update_metrics(metrics, logits.detach(), masks)
    scalars, lines = head.summarize(metrics.compute())
    pixel_acc = float((prediction["mask"] == masks).float().mean())
    assert scalars["pixel_acc"] == pytest.approx(pixel_acc) and len(lines) == 3


def test_kernel_size_three_has_smps_head_parameters():
    from segmentation_models_pytorch.base.heads import SegmentationHead as SmpHead

    head = _head(num_classes=5, kernel_size=3)
    smp_head = SmpHead(8, 5, kernel_size=3)
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in smp_head.parameters())
    assert head([torch.randn(1, 8, 9, 7)]).shape == (1, 5, 9, 7)  # padded: the size is kept
    assert _head().conv.kernel_size == (1, 1)
    assert "3x3 conv" in head.function


@pytest.mark.parametrize("options, message", [
    ({"loss": "dcie"}, r"unknown loss 'dcie' \(did you mean 'dice'.*\); valid: ce, dice, focal"),
    ({"loss": {"ce": 1.0, "lovaz": 1.0}}, r"did you mean 'lovasz'"),
    ({"loss": {"ce": -1.0}}, r"loss.ce: the weight -1.0 must be a number > 0"),
    ({"loss": "ce+ce"}, r"'ce' appears twice"),
    ({"loss": "focal", "loss_options": {"focal": {"gama": 1.0}}},
     r"loss_options.focal: unknown option of focal 'gama' \(did you mean 'gamma'\?\); valid: gamma, alpha"),
    ({"loss": "focal", "loss_options": {"tversky": {"alpha": 0.5}}}, r"loss_options.tversky: the loss has no tversky"),
    ({"loss": "dice", "loss_options": {"dice": {"smooth": 1.0}}}, r"valid: none"),
    ({"loss": "tversky", "loss_options": {"tversky": {"beta": 1.5}}}, r"loss_options.tversky.beta: 1.5 is out of range"),
    ({"loss": "focal", "loss_options": {"focal": {"gamma": -1}}}, r"focal.gamma: -1 is out of range; allowed: a number >= 0"),
    ({"binary": True}, r"num_classes must be 2, got 3"),
    ({"num_classes": 2, "binary": True, "loss": "focal", "class_weights": [1, 2]}, r"loss_options.focal.alpha"),
])
def test_bad_losses_and_options_say_what_is_valid(options, message):
    with pytest.raises(SpecError, match=message):
        _head(**options)


def test_a_bad_loss_in_a_spec_is_a_spec_error():
    with pytest.raises(SpecError, match="did you mean 'focal'"):
        edh.build({"encoder": {"name": "test_resnet"},
                   "heads": {"mask": {"type": "segmentation", "num_classes": 3, "loss": "focl"}}})
    with pytest.raises(SpecError, match="kernel_size"):
        edh.build({"encoder": {"name": "test_resnet"},
                   "heads": {"mask": {"type": "segmentation", "num_classes": 3, "kernel_size": 5}}})
