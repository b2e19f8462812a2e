"""U-Net decoder, unet_encoder, the segmentation head, the image-masks dataset, and a tiny run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edh
from edh.data.base import build_data
from edh.core.features import FeatureSpec
from edh.heads.segmentation import SegmentationHead
from edh.core.spec import parse_run_spec
from edh.core.spec_yaml import read_yaml
from edh.core.errors import SpecError
from roles import check_matches_spec

ENCODERS = {
    "test_resnet": {},
    "timm:test_resnet": {},
    "unet_encoder": {"base_width": 4, "depth": 4},
    "conv": {"channels": [4, 8, 16]},
}


def _segmenter(encoder: str, num_classes: int = 3, decoder: dict | None = None, **head) -> edh.Model:
    return edh.build({
        "encoder": {"name": encoder, **ENCODERS.get(encoder, {})},
        "decoder": {"name": "unet", "decoder_channels": None, **(decoder or {})},
        "heads": {"mask": {"type": "segmentation", "source": "decoder", "num_classes": num_classes, **head}},
    }, pretrained=False)


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("size", [(64, 64), (45, 70)])
def test_unet_on_every_pyramid_encoder_any_size(encoder, size):
    model = _segmenter(encoder, decoder={"decoder_channels": None if encoder != "unet_encoder" else [16, 8, 4]})
    x = torch.randn(2, 3 if encoder != "conv" else 1, *size) if encoder != "conv" else torch.randn(2, 1, *size)
    decoded = model.decoder(model.encoder(x), input_size=size)  # Model.forward passes input_size
    check_matches_spec(model.decoder.out_spec, decoded, size)
    assert model.decoder.out_spec.strides[0] == 1
    logits = model(x)["mask"]
    assert logits.shape == (2, 3, *size) and torch.isfinite(logits).all()
    model.heads["mask"].loss(logits, torch.randint(0, 3, (2, *size)))["ce"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_blocks_crop_the_overshoot_at_the_bottom_right():
    from edh.decoders.unet import UnetBlock

    block = UnetBlock(4, 2, 3, factor=2)
    x, skip = torch.randn(1, 4, 3, 4), torch.randn(1, 2, 5, 7)  # 2x gives 6x8: one row and column too many
    assert block(x, skip).shape == (1, 3, 5, 7)
    assert UnetBlock(4, 0, 3, factor=2)(x).shape == (1, 3, 6, 8)  # no skip: exactly 2x


def test_transpose_upsampling_and_fewer_blocks():
    model = _segmenter("test_resnet", decoder={"upsample": "transpose", "decoder_channels": [32, 16, 8]})
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.decoder.modules())
    assert model.decoder.out_spec.strides == (4, 8, 16)  # stopped early: the head up-samples by 4
    assert model(torch.randn(1, 3, 50, 40))["mask"].shape == (1, 3, 50, 40)


def test_decoder_channels_count_error_says_how_many():
    with pytest.raises(ValueError, match="1 to 5 channel counts"):
        _segmenter("test_resnet", decoder={"decoder_channels": [8] * 6})
    with pytest.raises(SpecError, match="upsample"):
        _segmenter("test_resnet", decoder={"upsample": "bicubic"})


def test_original_unet_has_the_papers_layers():
    spec = read_yaml(Path(edh.__file__).parent / "configs" / "unet-original.yaml")
    model = edh.build(spec, pretrained=False)
    # Ronneberger et al. 2015, fig. 1: 64..1024 channels, 2x2 up-convs, 1x1 conv to 2 classes, 1-channel input
    assert sum(p.numel() for p in model.parameters()) == 31_030_658
    assert [m.out_channels for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)] == [512, 256, 128, 64]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.encoder.out_spec.channels == (64, 128, 256, 512, 1024)


def test_segmentation_head_on_an_fpn_reads_its_finest_level():
    model = edh.build({"encoder": {"name": "test_resnet"}, "decoder": {"name": "fpn", "out_channels": 8, "extra": "none"},
                       "heads": {"mask": {"type": "segmentation", "source": "decoder", "num_classes": 3}}})
    assert model.decoder.out_spec.strides[0] == 4 and model.heads["mask"].stride == 4
    logits = model(torch.randn(2, 3, 45, 70))["mask"]
    assert logits.shape == (2, 3, 45, 70)
    model.heads["mask"].loss(logits, torch.randint(0, 3, (2, 45, 70)))["ce"].backward()
    assert model.decoder.fpn.inner_blocks[0][0].weight.grad is not None


def test_fpn_segmentation_config_builds():
    spec = read_yaml(Path(edh.__file__).parent / "configs" / "fpn-segmentation-scenes.yaml")
    model = edh.build({**spec["model"], "heads": {"mask": {**spec["model"]["heads"]["mask"], "num_classes": 11}}},
                      pretrained=False)
    assert model(torch.randn(1, 3, 64, 64))["mask"].shape == (1, 11, 64, 64)


def test_head_on_an_encoder_level_upsamples_and_crops():
    model = edh.build({"encoder": {"name": "test_resnet"},
                       "heads": {"mask": {"type": "segmentation", "source": "encoder.2", "num_classes": 4}}})
    assert model(torch.randn(2, 3, 37, 50))["mask"].shape == (2, 4, 37, 50)


def test_losses_and_ignore_index():
    head = SegmentationHead(FeatureSpec("pyramid", (8,), (1,)), num_classes=3, loss="ce+dice", ignore_index=255)
    target = torch.randint(0, 3, (2, 6, 6))
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    terms = head.loss(perfect, target)
    assert set(terms) == {"ce", "dice"} and terms["ce"] < 1e-6 and terms["dice"] < 1e-3
    wrong = perfect.roll(1, dims=1)
    assert head.loss(wrong, target)["dice"] > 0.9
    ignored = target.clone()
    ignored[:, :3] = 255  # make the top half ignored and wrong there: the loss must not change
    mixed = perfect.clone()
    mixed[:, :, :3] = wrong[:, :, :3]
    assert head.loss(mixed, ignored)["ce"] < 1e-6 and head.loss(mixed, ignored)["dice"] < 1e-3
    assert head.loss(torch.zeros(1, 3, 2, 2, requires_grad=True), torch.zeros(1, 2, 2, dtype=torch.long))["dice"].requires_grad


def test_metrics_miou_and_per_class():
    head = SegmentationHead(FeatureSpec("pyramid", (8,), (1,)), num_classes=3, class_names=["bg", "a", "b"])
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 2, 0]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    metrics = head.make_metrics("test")
    head.update_metrics(metrics, logits, target)
    values = metrics.compute()
    iou = [3 / 5, 2 / 3, 1 / 2]  # per class: intersection / union
    torch.testing.assert_close(values["iou"], torch.tensor(iou))
    torch.testing.assert_close(values["miou"], torch.tensor(sum(iou) / 3))
    torch.testing.assert_close(values["dice"], torch.tensor([2 * i / (1 + i) for i in iou]))
    scalars, lines = head.summarize(values)
    assert "miou" in scalars and lines[1].startswith("bg")
    prediction = head.predict(logits)
    assert prediction["mask"].shape == (1, 2, 4) and torch.equal(prediction["mask"], pred)
    assert head.format_prediction(prediction, 0) == "a 37.5%, b 12.5%"


def test_per_class_precision_recall_in_the_table_and_the_scalars():
    names = ["bg", "a", "b"]
    head = SegmentationHead(FeatureSpec("pyramid", (8,), (1,)), num_classes=3, class_names=names, ignore_index=255)
    target = torch.tensor([[[0, 0, 1, 1, 255], [0, 0, 2, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1, 2], [0, 0, 2, 0, 2]]])  # the ignored column is wrong: it must not count
    metrics = head.make_metrics("test")
    head.update_metrics(metrics, torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float(), target)
    values = metrics.compute()
    kept = target != 255
    t, p = target[kept], pred[kept]
    for key, expected in (("precision", [((p == k) & (t == k)).sum() / (p == k).sum() for k in range(3)]),
                          ("recall", [((p == k) & (t == k)).sum() / (t == k).sum() for k in range(3)])):
        torch.testing.assert_close(values[key], torch.stack(expected).float())
    scalars, lines = head.summarize(values)
    assert lines[0].split() == ["class", "IoU", "Dice", "Precision", "Recall"] and len(lines) == 4
    for key in ("iou", "dice", "precision", "recall"):  # everything the table shows, as flat floats (edh eval --json)
        assert [scalars[f"{key}/{name}"] for name in names] == pytest.approx(values[key].tolist())
    assert all(isinstance(v, float) for v in scalars.values())
    assert [float(x) for x in lines[2].split()[1:]] == pytest.approx(
        [scalars[f"{key}/a"] for key in ("iou", "dice", "precision", "recall")], abs=5e-4)
    assert head.summarize({"miou": values["miou"]})[1] == []  # validation: no per-class figures, no table


@pytest.mark.parametrize("options, message", [
    ({"num_classes": 1}, "num_classes >= 2"),
    ({"num_classes": 3, "loss": "focal+dcie"}, "unknown loss 'dcie'.*valid: ce, dice, focal, jaccard, lovasz, tversky"),
    ({"num_classes": 3, "class_names": ["a"]}, "class_names"),
])
def test_head_errors(options, message):
    with pytest.raises(ValueError, match=message):
        SegmentationHead(FeatureSpec("pyramid", (8,), (1,)), **options)


# ---- image + mask folders ---------------------------------------------------------------------
def _write_pair(root: Path, name: str, size=(20, 16), mask_size=None, palette=True, top=2, mode=None):
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        root / "images" / f"{name}.jpg")
    w, h = mask_size or size
    values = (np.arange(h * w).reshape(h, w) % (top + 1)).astype(np.uint8)
    mask = Image.fromarray(values, mode="L")
    if mode:
        mask = mask.convert(mode)
    elif palette:
        mask = mask.convert("P")
        mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    mask.save(root / "masks" / f"{name}.png")


def test_image_masks_reads_palette_indices(tmp_path):
    for i in range(10):
        _write_pair(tmp_path, f"im{i}", palette=i % 2 == 0)
    bundle = build_data("image-masks", {"root": str(tmp_path), "image_size": 32, "augment": "flip"}, seed=0)
    assert bundle.info.extra["head_defaults"]["mask"]["num_classes"] == 3
    image, targets = bundle.train[0]
    assert image.shape == (3, 32, 32) and targets["mask"].shape == (32, 32)
    assert set(targets["mask"].unique().tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("case, message", [
    ("size", "im0.png is 10x10.*its image .*im0.jpg is 20x16"),
    ("range", "im0.png holds class id\\(s\\) \\[2\\].*num_classes is 2"),
    ("rgb", "im0.png is a RGB image"),
    ("missing", "have no mask.*im1.jpg"),
])
def test_image_masks_errors_name_the_file(tmp_path, case, message):
    _write_pair(tmp_path, "im0", mask_size=(10, 10) if case == "size" else None, mode="RGB" if case == "rgb" else None)
    if case == "missing":
        _write_pair(tmp_path, "im1")
        (tmp_path / "masks" / "im1.png").unlink()
    options = {"root": str(tmp_path), "num_classes": 2} if case == "range" else {"root": str(tmp_path)}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_data("image-masks", options, seed=0)


# ---- a run end to end -------------------------------------------------------------------------
def test_tiny_run_trains_evaluates_and_draws(tmp_path):
    from edh.workflows.evaluate import evaluate_run
    from edh.workflows.predict import predict_inputs
    from edh.train.runner import train_run

    spec = parse_run_spec({
        "model": {"encoder": {"name": "test_resnet"}, "decoder": {"name": "unet", "decoder_channels": [16, 8, 8, 8, 8]},
                  "heads": {"mask": {"type": "segmentation", "source": "decoder", "loss": "ce+dice"}}},
        "data": {"name": "scenes", "image_size": 32, "sprite_size": [12, 16], "num_train": 32, "num_val": 8,
                 "num_test": 8, "batch_size": 16},
        "train": {"epochs": 1, "lr": 0.01},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    })
    run = train_run(spec, tmp_path / "run", limit_val_batches=1)
    assert run.model.heads["mask"].num_classes == 11 and run.model.heads["mask"].class_names[0] == "background"
    evaluation = evaluate_run(run, "test", tmp_path / "run", progress=False)
    assert 0 <= evaluation.metrics["mask"]["miou"] <= 1 and len(evaluation.reports["mask"]) == 12
    assert {f"{key}/background" for key in ("iou", "dice", "precision", "recall")} <= set(evaluation.metrics["mask"])
    from PIL import Image

    image = (run.info and build_data("scenes", spec.data.options(), 0).test.images[0]).permute(1, 2, 0).numpy()
    Image.fromarray(image).save(tmp_path / "scene.png")
    results, written = predict_inputs(run, [tmp_path / "scene.png"], tmp_path / "out")
    assert results[0].lines["mask"] and written == [tmp_path / "out" / "scene.overlay.png"]
    with Image.open(written[0]) as overlay:
        assert overlay.width > 200


def test_unet_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from edh.export.onnx import check_graph, export_graph

    model = _segmenter("test_resnet", decoder={"decoder_channels": [16, 8, 8, 8, 8]}).eval()
    export_graph(model, (torch.randn(2, 3, 64, 64),), tmp_path / "unet.onnx", input_names=["images"],
                 probe=(torch.randn(3, 3, 64, 64),))
    (check,) = check_graph(tmp_path / "unet.onnx", model, (torch.randn(4, 3, 64, 64),))
    assert check.shape == (4, 3, 64, 64) and check.max_abs_diff < 1e-4


def test_the_model_blocks_in_the_segmentation_docs_build():
    """Every ```yaml block of docs/segmentation.md that holds a ``model:`` builds as written (the data
    would fill ``num_classes``; here 3)."""
    import re

    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "segmentation.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    models = [b["model"] for b in blocks if isinstance(b, dict) and "model" in b]
    assert models, "docs/segmentation.md has no model block"
    for spec in models:
        for head in spec.get("heads", {}).values():
            head.setdefault("num_classes", 3)
        model = edh.build(spec).eval()
        with torch.no_grad():
            outputs = model(torch.randn(1, 3, 64, 48))
        assert all(out.shape[-2:] == (64, 48) for out in outputs.values())


def test_class_map_is_argmax_over_classes_ties_to_the_first():
    from edh.heads.segmentation import class_map

    scores = torch.randint(0, 3, (2, 5, 9, 7)).float()  # many ties
    assert torch.equal(class_map(scores), scores.argmax(dim=1))
    assert class_map(torch.zeros(1, 4, 3, 3)).eq(0).all()
