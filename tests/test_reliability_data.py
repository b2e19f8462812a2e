"""Nothing lost, nothing silent: the data a run trained on against the data on disk, images read as
they look, masks that must be class ids, errors from DataLoader workers, a read-only run folder.

Catalogue: docs/_reliability_data.md. One tiny image-folder run (conv [4, 8] on 8x8 images, 3 steps)
is trained per module; each test copies it with its data into its own tmp_path and changes the copy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from edh.core.errors import DataError, DataItemError, EdhError
from edh.data.files import ImageReadError, read_image


def _folder(root: Path, classes=("a", "b"), count=6) -> Path:
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(rng.normal(40 + 160 * index, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _spec(root: Path, **data) -> dict:
    return {
        "model": {"encoder": {"name": "conv", "channels": [4, 8]}, "heads": {"label": {"type": "classification"}}},
        "data": {"name": "image-folder", "root": str(root), "image_size": 8, "in_channels": 3, "val_fraction": 0.25,
                 "test_fraction": 0.25, "augment": "none", "batch_size": 4, **data},
        "train": {"epochs": 1, "lr": 0.01, "seed": 0},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    base = tmp_path_factory.mktemp("reliability_data")
    root = _folder(base / "data")
    train_run(parse_run_spec(_spec(root)), base / "run", max_steps=3, limit_val_batches=1)
    return base


@pytest.fixture
def copy(trained, tmp_path):
    """The trained run and its data, copied into tmp_path (spec.yaml's data.root pointing at the copy)."""
    shutil.copytree(trained / "data", tmp_path / "data")
    shutil.copytree(trained / "run", tmp_path / "run")
    spec_file = tmp_path / "run" / "spec.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["data"]["root"] = str(tmp_path / "data")
    spec_file.write_text(yaml.safe_dump(spec))
    return tmp_path


def _evaluate(run_dir: Path, **options):
    from edh.workflows.evaluate import evaluate_run
    from edh.workflows.run import load_run

    return evaluate_run(load_run(run_dir), "test", None, progress=False, **options)


def _recorded(run_dir: Path) -> dict:
    return json.loads((run_dir / "data_files.json").read_text())["splits"]


# ---- 1. the run's data fingerprint against the data on disk ---------------------------------------
def test_a_run_records_its_classes_files_and_preprocessing(copy):
    info = json.loads((copy / "run" / "data.json").read_text())
    fingerprint = info["fingerprint"]
    assert fingerprint["classes"] == {"class_names": ["a", "b"]}
    assert fingerprint["preprocessing"]["mean"] == info["mean"] and fingerprint["preprocessing"]["image_size"] == [8, 8]
    assert [fingerprint["splits"][s]["count"] for s in ("train", "val", "test")] == [6, 3, 3]
    splits = _recorded(copy / "run")
    assert sorted(sum(splits.values(), [])) == sorted(f"{c}/{i}.png" for c in "ab" for i in range(6))
    result = _evaluate(copy / "run")
    assert result.count == 3 and 0 <= result.metrics["label"]["acc"] <= 1


def test_a_renamed_class_folder_is_refused_naming_the_rename(copy, caplog):
    (copy / "data" / "a").rename(copy / "data" / "z")
    with pytest.raises(DataError, match=r"class 'a' was renamed to 'z'") as error:
        _evaluate(copy / "run")
    assert "--allow-changed-data" in str(error.value) and "'b' 1 -> 0" in str(error.value)
    with caplog.at_level("WARNING", logger="edh"):
        result = _evaluate(copy / "run", allow_changed_data=True)
    test_files = _recorded(copy / "run")["test"]
    assert result.count == sum(1 for f in test_files if f.startswith("b/"))  # a's test files are gone from disk
    assert "renamed to 'z'" in caplog.text and f"{result.count} of {len(test_files)}" in caplog.text


def test_one_added_file_that_moves_the_splits_is_refused_naming_the_moves(copy, caplog):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(copy / "data" / "b" / "new.png")
    with pytest.raises(DataError) as error:
        _evaluate(copy / "run")
    message = str(error.value)
    assert "1 file(s) on disk that the run never saw: b/new.png" in message
    assert "moved from the train split to the test split" in message and "optimistic" in message
    assert "split sizes (train / val / test): 6 / 3 / 3 at training" in message
    with caplog.at_level("WARNING", logger="edh"):
        result = _evaluate(copy / "run", allow_changed_data=True)
    assert result.count == 3  # exactly the run's recorded test files, not the reshuffled split
    assert "b/new.png" in caplog.text


def test_a_new_class_folder_is_a_clear_error_not_a_traceback(copy, cli, capsys):
    _folder(copy / "data", classes=("c",), count=2)
    with pytest.raises(DataError, match=r"class 'c' is new \(2 file\(s\)\); the model has no output for it"):
        _evaluate(copy / "run")
    code = cli(["eval", str(copy / "run")])
    err = capsys.readouterr().err
    assert code != 0 and "class 'c' is new" in err and "Traceback" not in err
    assert cli(["eval", str(copy / "run"), "--allow-changed-data", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 3


def test_removed_files_are_named(copy):
    gone = _recorded(copy / "run")["test"][0]
    (copy / "data" / gone).unlink()
    with pytest.raises(DataError, match=rf"1 file\(s\) of the run's data are gone: {gone}"):
        _evaluate(copy / "run")
    assert _evaluate(copy / "run", allow_changed_data=True).count == 2


def test_without_its_file_list_a_changed_split_is_still_caught_by_its_hash(copy):
    (copy / "run" / "data_files.json").unlink()
    assert _evaluate(copy / "run").count == 3
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(copy / "data" / "b" / "new.png")
    with pytest.raises(DataError, match=r"(?s)6 / 3 / 3 at training, 7 / 3 / 3 now.*differ from the run's \(their "
                                        r"hash\); .*data_files\.json, which lists the run's files, is missing"):
        _evaluate(copy / "run")


def test_in_memory_data_is_fingerprinted_by_content():
    from edh.data import fingerprint as fp
    from edh.data.base import build_data

    bundle = build_data("digits", {"image_size": None, "augment": "none"})
    recorded = bundle.info.fingerprint
    assert recorded["splits"]["test"]["count"] == 359 and "content_sha256" in recorded["splits"]["test"]
    again = build_data("digits", {"image_size": None, "augment": "none"})
    assert fp.differences(recorded, again.info.fingerprint, None, None) == ([], [])
    again.test.images = again.test.images.clone()
    again.test.images[0] = 0
    hard, _ = fp.differences(recorded, fp.make("digits", again)[0], None, None)
    assert hard == ["the samples of the test split(s) differ from the run's (their hash)"]


def test_a_run_from_before_fingerprints_still_evaluates_with_a_note(copy, caplog):
    info_file = copy / "run" / "data.json"
    info = json.loads(info_file.read_text())
    del info["fingerprint"]
    info_file.write_text(json.dumps(info))
    (copy / "run" / "data_files.json").unlink()
    with caplog.at_level("INFO", logger="edh"):
        assert _evaluate(copy / "run").count == 3
    assert "trained before edh recorded a fingerprint" in caplog.text
    (copy / "data" / "a").rename(copy / "data" / "z")  # its classes (data.json) are still checked
    with pytest.raises(DataError, match=r"(?s)class 'a' is gone.*class 'z' is new"):
        _evaluate(copy / "run")


def test_other_preprocessing_in_the_spec_is_refused(copy):
    spec_file = copy / "run" / "spec.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["data"]["mean"] = [0.5, 0.5, 0.5]
    spec_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(DataError, match=r"preprocessing mean: \[0\.485, 0\.456, 0\.406\] at training, "
                                        r"\[0\.5, 0\.5, 0\.5\] now"):
        _evaluate(copy / "run")


def test_a_segmentation_run_refuses_a_mask_with_a_new_class(tmp_path):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    masks = [(np.arange(64).reshape(8, 8) % 3).astype(np.uint8) for _ in range(8)]
    root = _masks(tmp_path / "data", masks)
    spec = _spec(root)
    spec["data"] = {"name": "image-masks", "root": str(root), "image_size": 8, "val_fraction": 0.25,
                    "test_fraction": 0.25, "augment": "none", "batch_size": 4}
    spec["model"]["heads"] = {"mask": {"type": "segmentation", "source": "encoder"}}
    train_run(parse_run_spec(spec), tmp_path / "run", max_steps=2, limit_val_batches=1)
    assert _evaluate(tmp_path / "run").count == 2
    test_image = _recorded(tmp_path / "run")["test"][0]  # images/mN.png
    Image.fromarray(np.full((8, 8), 3, np.uint8)).save(root / "masks" / Path(test_image).name)
    with pytest.raises(DataError, match=r"mask class '3' is new; the model has no output for it"):
        _evaluate(tmp_path / "run")
    with pytest.raises(DataError, match=rf"{Path(test_image).name} holds class id\(s\) \[3\], outside 0\.\.2"):
        _evaluate(tmp_path / "run", allow_changed_data=True)  # the run's 3 classes, checked on its test masks


# ---- 2. one source of truth for preprocessing: predict and eval ---------------------------------
def test_an_edited_data_json_is_refused_by_predict_and_eval(copy, cli, capsys):
    from edh.workflows.predict import predict_inputs
    from edh.workflows.run import load_run

    image = copy / "data" / "a" / "0.png"
    before = predict_inputs(load_run(copy / "run"), [image], top_k=2)[0][0].lines
    info_file = copy / "run" / "data.json"
    info = json.loads(info_file.read_text())
    info["mean"], info["std"] = [0.1, 0.1, 0.1], [0.9, 0.9, 0.9]
    info_file.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"data\.json was changed after training:\n  - mean is \[0\.1, 0\.1, 0\.1\] "
                                        r"but the run was trained with \[0\.485, 0\.456, 0\.406\]"):
        predict_inputs(load_run(copy / "run"), [image])
    with pytest.raises(DataError, match=r"std is \[0\.9, 0\.9, 0\.9\]"):
        _evaluate(copy / "run")
    after = predict_inputs(load_run(copy / "run"), [image], top_k=2, allow_changed_data=True)[0][0].lines
    assert after == before  # the training values, not the edited ones
    assert cli(["predict", str(copy / "run"), str(image)]) != 0
    err = capsys.readouterr().err
    assert "mean is [0.1, 0.1, 0.1]" in err and "Traceback" not in err
    assert cli(["predict", str(copy / "run"), str(image), "--top-k", "2", "--allow-changed-data"]) == 0
    captured = capsys.readouterr()
    assert before["label"] in captured.out and "changed after training" in captured.err


# ---- 3. images: EXIF orientation, float and high-bit images, errors from workers -------------------
def _oriented(path: Path, orientation: int = 6) -> np.ndarray:
    """A 16x24 (HxW) RGB image whose top half is red, saved with an EXIF orientation tag."""
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[:8, :, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return pixels


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    path = tmp_path / f"phone.{suffix}"
    _oriented(path)  # orientation 6: the viewer turns it 90 degrees clockwise
    image = read_image(path, 3)
    assert image.shape == (3, 24, 16)  # upright: taller than wide
    red = image[0] - image[1]
    assert red[:, 12:].mean() > 0.8 and red[:, :4].mean() < 0.2  # the red top half is now the right half


def test_masks_and_their_size_check_are_upright(tmp_path):
    from edh.data.masks import check_masks, image_size_of, read_mask

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = tmp_path / "images" / "im.jpg"
    _oriented(image)
    assert image_size_of(image) == (24, 16)
    upright = tmp_path / "masks" / "im.png"
    Image.fromarray((np.arange(384).reshape(24, 16) % 2).astype(np.uint8)).save(upright)
    assert check_masks([(image, upright)], None, None) == 2
    stored = tmp_path / "masks" / "stored.png"
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(stored)
    with pytest.raises(DataError, match=r"stored\.png is 24x16 \(WxH\) but its image .*im\.jpg is 16x24"):
        check_masks([(image, stored)], None, None)
    tagged = tmp_path / "masks" / "tagged.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray((np.arange(24).reshape(4, 6) % 2).astype(np.uint8)).save(tagged, exif=exif)
    assert read_mask(tagged).shape == (6, 4)


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_float_and_high_bit_images_are_scaled_by_one_rule(tmp_path):
    ramp = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    floats = _save(ramp, tmp_path / "float.tif")
    assert Image.open(floats).mode == "F"
    torch.testing.assert_close(read_image(floats, 1)[0], torch.from_numpy(ramp))  # not black
    rgb = read_image(floats, 3)
    assert rgb.shape == (3, 3, 4) and torch.equal(rgb[0], rgb[2])
    assert torch.equal(read_image(floats, 4)[3], torch.ones(3, 4))
    sixteen = _save((ramp * 65535).astype(np.uint16), tmp_path / "sixteen.png")
    torch.testing.assert_close(read_image(sixteen, 1)[0], torch.from_numpy(ramp), atol=1e-4, rtol=0)
    int32 = _save((ramp * 65535).astype(np.int32), tmp_path / "int32.tif")
    torch.testing.assert_close(read_image(int32, 1)[0], torch.from_numpy(ramp), atol=1e-4, rtol=0)


@pytest.mark.parametrize("array, message", [
    (np.linspace(0, 255, 12, dtype=np.float32),
     r"float image .*bad\.tif \(mode F\) holds values in \[0, 255\]; .*\[0, 1\]"),
    (np.array([0.5] * 11 + [np.nan], np.float32), r"float image .*bad\.tif holds 1 NaN / Inf pixel"),
    (np.arange(12, dtype=np.int32) * 100_000, r"integer image .*bad\.tif \(mode I\) holds values 0\.\.1100000"),
])
def test_images_outside_the_rule_are_refused(tmp_path, array, message):
    path = _save(array.reshape(3, 4), tmp_path / "bad.tif")
    with pytest.raises(ImageReadError, match=message):
        read_image(path, 1)


def test_an_error_raised_in_a_dataloader_worker_keeps_only_its_message(tmp_path):
    from torch.utils.data import DataLoader

    from edh.data.base import build_data

    root = _folder(tmp_path / "data", count=4)
    for path in (root / "b").iterdir():
        path.write_bytes(b"broken")
    bundle = build_data("image-folder", {"root": str(root), "image_size": 8, "val_fraction": 0.0,
                                         "test_fraction": 0.0, "augment": "none"})
    batches = iter(DataLoader(bundle.train, batch_size=2, num_workers=2))
    try:
        with pytest.raises(ImageReadError) as error:
            list(batches)
    finally:  # left to the garbage collector (the traceback holds it), its workers take 5 s each to stop
        batches._shutdown_workers()
    message = str(error.value)
    assert message.startswith("cannot read image ") and "/b/" in message and "\n" not in message
    assert "Traceback" not in message and "worker" not in message and isinstance(error.value, EdhError)


def test_any_error_in_getitem_names_the_file(tmp_path):
    from edh.data.base import build_data

    root = _folder(tmp_path / "data", count=2)
    bundle = build_data("image-folder", {"root": str(root), "image_size": 8, "val_fraction": 0.0,
                                         "test_fraction": 0.0, "augment": "none"})

    def broken(image):
        raise RuntimeError("a transform failed")

    bundle.train.transform = broken
    with pytest.raises(DataItemError, match=r"cannot load image .*\.png: RuntimeError: a transform failed"):
        bundle.train[0]
    wrapped = ("Caught DataItemError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nedh.core.errors.DataItemError: cannot load image x.png: boom\n')
    assert str(DataItemError(wrapped)) == "cannot load image x.png: boom"


@pytest.mark.slow
def test_a_corrupt_image_with_workers_is_one_line_on_the_command_line(tmp_path, cli, capsys):
    root = _folder(tmp_path / "data", count=4)
    for path in root.rglob("*.png"):
        path.write_bytes(b"broken")
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(root, num_workers=2, val_fraction=0.0, test_fraction=0.0)))
    assert cli(["train", str(spec_file), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cannot read image" in line]
    assert len(lines) == 1 and "Traceback" not in err and "worker process" not in err


# ---- 4. masks must look like class ids ----------------------------------------------------------
def _masks(root: Path, values: list[np.ndarray], suffix: str = "png") -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index, mask in enumerate(values):
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "images" / f"m{index}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"m{index}.{suffix}")
    return root


def _mask_data(root: Path, **options):
    from edh.data.base import build_data

    return build_data("image-masks", {"root": str(root), "image_size": 8, **options})


def test_void_255_without_ignore_index_is_refused(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4] = 1
    mask[4] = 255
    root = _masks(tmp_path, [mask, mask])
    with pytest.raises(DataError, match=r"m0\.png holds the values \[0, 1, 255\] .*data\.ignore_index: 255"):
        _mask_data(root)
    assert _mask_data(root, ignore_index=255).info.extra["head_defaults"]["mask"]["num_classes"] == 2


def test_a_jpeg_mask_is_refused(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 2
    mask[::3, ::5] = 1
    root = _masks(tmp_path, [mask], suffix="jpg")
    with pytest.raises(DataError, match=r"m0\.jpg is a JPEG file: lossy compression .*distinct values found.*PNG"):
        _mask_data(root)
    with pytest.raises(DataError, match="JPEG"):
        _mask_data(root, num_classes=3)


def test_mask_ids_with_gaps_are_refused_unless_num_classes_is_set(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[0], mask[1] = 1, 5
    root = _masks(tmp_path, [mask])
    with pytest.raises(DataError, match=r"values \[0, 1, 5\], with gaps: \[2, 3, 4\] never occur .*m0\.png "
                                        r"holds 5.*data\.num_classes: 6"):
        _mask_data(root)
    assert _mask_data(root, num_classes=6).info.extra["head_defaults"]["mask"]["num_classes"] == 6


def test_many_distinct_mask_values_are_refused(tmp_path):
    root = _masks(tmp_path, [np.arange(100).reshape(10, 10)])
    with pytest.raises(DataError, match=r"100 distinct values .*not class ids.*data\.num_classes: 100"):
        _mask_data(root)
    assert _mask_data(root, num_classes=100).info.extra["head_defaults"]["mask"]["num_classes"] == 100


# ---- 5. a read-only run folder: the metrics first, then the plots ---------------------------------
def test_eval_prints_the_metrics_before_a_plot_it_cannot_write(copy, cli, capsys, monkeypatch):
    run_dir = copy / "run"
    real = tempfile.mkstemp

    def read_only(suffix=None, prefix=None, dir=None, text=False):
        if dir is not None and Path(dir).resolve() == run_dir.resolve():
            raise PermissionError(13, "Permission denied", os.path.join(dir, f"{prefix}x1y2z3{suffix}"))
        return real(suffix=suffix, prefix=prefix, dir=dir, text=text)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    (run_dir / "confusion_matrix.png").unlink(missing_ok=True)
    assert cli(["eval", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert "[label] acc=" in captured.out and "precision" in captured.out
    assert f"{run_dir / 'confusion_matrix.png'}: Permission denied" in captured.err and "--out" in captured.err
    assert not (run_dir / "confusion_matrix.png").exists()
    assert cli(["eval", str(run_dir), "--out", str(copy / "plots")]) == 0
    assert "confusion matrix:" in capsys.readouterr().out and (copy / "plots" / "confusion_matrix.png").is_file()
