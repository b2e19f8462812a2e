"""Sliding-window inference (`edh.ops.tiling`), ``edh predict`` / ``edh eval`` with ``--tile``, and
predict at each image's own size (no silent resize)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edh
from edh.ops.tiling import blend_window, ramp, tiled_forward, window_starts
from test_export import make_run

UNET = {"encoder": {"name": "test_resnet"}, "decoder": {"name": "unet", "decoder_channels": [16, 8, 8, 8, 8]},
        "heads": {"mask": {"type": "segmentation", "source": "decoder"}}}


class Blended(torch.nn.Module):
    """A stand-in head: only its ``tiling`` is read."""

    tiling = "blend"


class PointwiseModel(torch.nn.Module):
    """``{"mask": conv1x1(x)}``: exactly translation-equivariant, so tiles must stitch to the whole; it
    records the shape of every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(tuple(x.shape))
        return {"mask": self.conv(x)}


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 0.25), (64, 32, 0.5), (33, 32, 0.0), (20, 32, 0.25)])
def test_windows_cover_the_image_and_the_last_is_flush(length, tile, overlap):
    starts = window_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] == max(0, length - tile)  # flush with the border (or one window for a short side)
    assert all(b - a <= max(1, int(tile * (1 - overlap))) for a, b in zip(starts, starts[1:]))
    covered = torch.zeros(length)
    for start in starts:
        covered[start:start + tile] += 1
    assert (covered >= 1).all()


def test_ramps_cross_fade_to_a_constant_and_never_reach_zero():
    weights = ramp(16, 4)  # tile 16, overlap 0.25: windows step by 12, sharing 4 pixels
    torch.testing.assert_close(weights[12:] + weights[:4], torch.ones(4))
    assert weights.min() > 0 and weights[4:12].eq(1).all()
    assert torch.equal(blend_window(8, 6, (0, 0)), torch.ones(8, 6))


@pytest.mark.parametrize("size, tile, overlap", [((70, 90), 32, 0.25), ((64, 50), (24, 40), 0.5), ((40, 40), 16, 0.0)])
def test_pointwise_model_tiled_equals_whole(size, tile, overlap):
    model = PointwiseModel().eval()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        whole = model(images)["mask"]
        model.seen.clear()
        tiled = tiled_forward(model, images, {"mask": Blended()}, tile, overlap, tiles_per_batch=3)
    torch.testing.assert_close(tiled["mask"], whole, atol=1e-6, rtol=1e-6)
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    assert len(model.seen) > 1 and all(s[0] <= 3 * 2 and s[2:] == (th, tw) for s in model.seen)


def test_large_image_runs_in_tile_sized_batches():
    model = PointwiseModel().eval()
    images = torch.randn(1, 3, 2048, 2048)
    with torch.no_grad():
        tiled = tiled_forward(model, images, {"mask": Blended()}, 256, 0.25, tiles_per_batch=4)["mask"]
        whole = model.conv(images)
    assert max(s[0] for s in model.seen) <= 4 and {s[2:] for s in model.seen} == {(256, 256)}
    assert len(model.seen) == -(-len(window_starts(2048, 256)) ** 2 // 4)  # 11 x 11 windows, 4 per forward
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_unet_at_a_tile_no_smaller_than_the_image_is_exact_and_tiles_stay_close():
    model = edh.build(UNET | {"heads": {"mask": {**UNET["heads"]["mask"], "num_classes": 3}}}, pretrained=False).eval()
    images = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        whole = model(images)["mask"]
        assert torch.equal(tiled_forward(model, images, model.tasks(), 64)["mask"], whole)
        tiled = tiled_forward(model, images, model.tasks(), 32, 0.5)["mask"]
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    assert not torch.equal(tiled, whole)  # tiles see less context: close, not equal


def test_a_head_that_cannot_tile_is_named_before_any_work():
    model = edh.build({"encoder": {"name": "test_resnet"}, "decoder": UNET["decoder"],
                       "heads": {"mask": {"type": "segmentation", "source": "decoder", "num_classes": 3},
                                 "label": {"type": "classification", "num_classes": 4}}}, pretrained=False)
    with pytest.raises(ValueError, match=r"'label' \(ClassificationHead, tiling None\).*--heads mask"):
        tiled_forward(model, torch.randn(1, 3, 64, 64), model.tasks(), 32)
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(PointwiseModel(), torch.randn(1, 3, 64, 64), {"mask": Blended()}, 32, overlap=1.0)


# ---- predict and eval ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    data = {"name": "scenes", "image_size": 32, "sprite_size": [12, 16], "num_train": 8, "num_val": 4,
            "num_test": 4, "batch_size": 4}
    return make_run({"model": UNET, "data": data}, tmp_path_factory.mktemp("tiling") / "unet")


def _image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _masks(run, monkeypatch) -> list[torch.Tensor]:
    """Each mask the segmentation head draws, as ``write_predictions`` gets it."""
    seen: list[torch.Tensor] = []
    head = run.model.heads["mask"]
    draw = head.write_predictions

    def spy(prediction, images, paths, out_dir):
        seen.extend(prediction["mask"])
        return draw(prediction, images, paths, out_dir)

    monkeypatch.setattr(head, "write_predictions", spy)
    return seen


def test_predict_says_what_it_resized_and_draws_masks_at_the_images_size(seg_run, tmp_path, monkeypatch, caplog):
    from edh.workflows.inputs import read_images
    from edh.workflows.predict import predict_inputs

    files = [_image(tmp_path / "big.png", 48, 40), _image(tmp_path / "same.png", 32, 32, 1)]
    masks = _masks(seg_run, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="edh"):
        results, written = predict_inputs(seg_run, files, tmp_path / "out")
    notes = [r.getMessage() for r in caplog.records if "resized" in r.getMessage()]
    assert len(notes) == 1 and "big.png 48x40 -> 32x32" in notes[0] and "same.png" not in notes[0]
    assert "--tile 32" in notes[0]
    assert [tuple(m.shape) for m in masks] == [(48, 40), (32, 32)] and len(written) == 2
    with torch.no_grad():  # the argmax of the logits up-sampled back, not a mask resized afterwards
        logits = seg_run.model(read_images(seg_run, files[:1]))["mask"]  # (1, K, 32, 32)
    up = torch.nn.functional.interpolate(logits, size=(48, 40), mode="bilinear", align_corners=False)
    assert torch.equal(masks[0], up.argmax(1)[0]) and all(r.lines["mask"] for r in results)
    masks.clear()
    predict_inputs(seg_run, files[:1], tmp_path / "tiled", tile=16, overlap=0.5)
    assert [tuple(m.shape) for m in masks] == [(48, 40)]  # tiled at the image's own size


def test_predict_with_a_tile_no_smaller_than_the_image_runs_it_whole(seg_run, tmp_path, monkeypatch):
    from edh.workflows.inputs import read_native_images
    from edh.workflows.predict import predict_inputs

    path = _image(tmp_path / "wide.png", 40, 56)
    masks = _masks(seg_run, monkeypatch)
    predict_inputs(seg_run, [path], tmp_path / "out", tile=64)
    with torch.no_grad():
        expected = seg_run.model(read_native_images(seg_run, [path]))["mask"].argmax(1)[0]
    assert torch.equal(masks[0], expected)


def test_cli_tile_options_and_errors(seg_run, tmp_path, cli, capsys):
    path = str(_image(tmp_path / "a.png", 40, 36))
    assert cli(["predict", str(seg_run.path), path, "--tile", "16", "--overlap", "0.5"]) == 0
    assert "\tmask: " in capsys.readouterr().out
    assert cli(["predict", str(seg_run.path), path, "--overlap", "0.5"]) == 2
    assert "give --tile N" in capsys.readouterr().err
    assert cli(["predict", str(seg_run.path), path, "--tile", "16", "--overlap", "1.5"]) == 2
    assert "[0, 1)" in capsys.readouterr().err
    assert cli(["eval", str(seg_run.path), "--json"]) == 0
    whole = capsys.readouterr().out
    assert cli(["eval", str(seg_run.path), "--json", "--tile", "32"]) == 0  # one tile per 32x32 scene: the same
    assert capsys.readouterr().out == whole
    assert cli(["eval", str(seg_run.path), "--tile", "16"]) == 0 and "miou=" in capsys.readouterr().out


def test_eval_with_tile_reads_image_files_at_their_own_size(tmp_path):
    from test_segmentation import _write_pair

    from edh.workflows.evaluate import evaluate_run

    for index in range(10):
        _write_pair(tmp_path / "data", f"im{index}", size=(30, 20))  # W x H
    data = {"name": "image-masks", "root": str(tmp_path / "data"), "image_size": 16, "batch_size": 4, "augment": "none"}
    run = make_run({"model": UNET, "data": data}, tmp_path / "run")
    sizes: list[tuple[int, ...]] = []
    run.model.encoder.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape)))
    evaluate_run(run, "test", progress=False)
    assert set(sizes) == {(1, 3, 16, 16)}
    sizes.clear()
    result = evaluate_run(run, "test", progress=False, tile=16, overlap=0.25)
    assert result.count == 1  # 20x30: rows at 0, 4 and columns at 0, 12, 14: 6 tiles of 16x16, 4 per forward
    assert sorted(set(sizes)) == [(2, 3, 16, 16), (4, 3, 16, 16)]
    assert 0 <= result.metrics["mask"]["miou"] <= 1
