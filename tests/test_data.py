"""Built-in data and user folders: deterministic splits, clear errors for missing or bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edh.data import DataFilesMissingError, build_data
from edh.data.base import split_indices
from edh.data.files import ImageReadError, read_image
from edh.data.images import FASHION_DIRS


def test_digits_splits_are_deterministic_and_disjoint():
    a = build_data("digits", {"image_size": None, "augment": "none"}, seed=3)
    b = build_data("digits", {"image_size": None, "augment": "none"}, seed=3)
    assert (len(a.train), len(a.val), len(a.test)) == (1258, 180, 359)
    assert torch.equal(a.test[5][0], b.test[5][0]) and a.test[5][1]["label"] == b.test[5][1]["label"]
    train, val, test = split_indices(1797, 0.1, 0.2, seed=3)
    assert not set(train) & set(val) and not set(train) & set(test) and len(set(train) | set(val) | set(test)) == 1797
    other = build_data("digits", {"image_size": None, "augment": "none"}, seed=4)
    assert not torch.equal(a.test.images, other.test.images)
    image, target = a.train[0]
    assert image.shape == (1, 8, 8) and target["label"].dtype == torch.int64


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty"):
        split_indices(0, 0.1, 0.1, 0)


def test_fashion_mnist_missing_files_say_what_provides_them(tmp_path):
    with pytest.raises(DataFilesMissingError, match=r"apt-get install dataset-fashion-mnist"):
        build_data("fashion-mnist", {"root": str(tmp_path)}, seed=0)


@pytest.mark.skipif(not all(__import__("os").path.isdir(d) for d in FASHION_DIRS), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_reads_the_debian_package():
    bundle = build_data("fashion-mnist", {"limit": 500}, seed=0)
    assert len(bundle.test) == 10_000 and bundle.info.class_names[9] == "Ankle boot"
    assert bundle.train[0][0].shape == (1, 28, 28)


def _write_folder(root, classes=("cat", "dog"), count=5):
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((12, 10, 3), 40 * index + i, np.uint8)).save(root / name / f"{i}.png")


def test_image_folder(tmp_path):
    _write_folder(tmp_path)
    bundle = build_data("image-folder", {"root": str(tmp_path), "image_size": 16, "val_fraction": 0.2,
                                         "test_fraction": 0.2}, seed=0)
    assert bundle.info.class_names == ["cat", "dog"]
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 10
    assert bundle.train[0][0].shape == (3, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataFilesMissingError, match="does not exist"):
        build_data("image-folder", {"root": str(tmp_path / "nope")}, seed=0)
    _write_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(ValueError, match="only one class"):
        build_data("image-folder", {"root": str(tmp_path / "one")}, seed=0)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_read_image_converts_any_mode(tmp_path, mode):
    path = tmp_path / f"{mode.replace(';', '')}.png"
    array = np.arange(48, dtype=np.uint16 if mode == "I;16" else np.uint8).reshape(6, 8)
    image = Image.fromarray(array * (1000 if mode == "I;16" else 1))
    image = image if mode in ("L", "I;16") else image.convert(mode)
    image.save(path)
    for channels in (1, 3):
        tensor = read_image(path, channels)
        assert tensor.shape == (channels, 6, 8) and 0 <= tensor.min() and tensor.max() <= 1


def test_unreadable_image_names_its_path(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        read_image(path, 3)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "missing.png", 3)
