"""Built-in image classification data: scikit-learn digits, Fashion-MNIST, and a user's ImageFolder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edh.data.base import DataBundle, DataFilesMissingError, DataInfo, ImageTensorDataset, split_indices
from edh.data.transforms import eval_transform, train_transform
from edh.core.registry import register_dataset

FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _tensor_splits(images: torch.Tensor, labels: torch.Tensor, info: DataInfo, train_idx, val_idx, test_idx,
                   augment: str) -> DataBundle:
    train_tf = train_transform(info.image_size, info.mean, info.std, augment)
    eval_tf = eval_transform(info.image_size, info.mean, info.std)

    def part(index, transform):
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageTensorDataset(images[index], labels[index], transform)

    return DataBundle(part(train_idx, train_tf), part(val_idx, eval_tf), part(test_idx, eval_tf), info)


@register_dataset("digits")
def digits(image_size: int | None = 32, val_fraction: float = 0.1, test_fraction: float = 0.2,
           augment: str = "light", seed: int = 0) -> DataBundle:
    """scikit-learn's 1,797 real handwritten digits (8x8, 1 channel, 10 classes), split by ``seed``.

    Args:
        image_size: side the 8x8 images are resized to (``None`` keeps 8x8).
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(raw.images / 16.0).float().unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(raw.target)
    size = (image_size, image_size) if image_size else (8, 8)
    info = DataInfo("image", 1, size, (0.3,), (0.4,), [str(i) for i in range(10)], {"label": "classification"},
                    {"dataset": "digits", "pixel_range": "0..1, white digit on black"})
    train_idx, val_idx, test_idx = split_indices(len(images), val_fraction, test_fraction, seed)
    return _tensor_splits(images, labels, info, train_idx, val_idx, test_idx, augment)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4:
        raise ValueError(f"{path} is too short to be an IDX file")
    zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def find_fashion_files(root: str | None) -> dict[str, tuple[Path, Path]]:
    """Paths of the four IDX files (plain or .gz) under ``root`` or Debian's folder."""
    roots = [Path(root)] if root else [Path(p) for p in FASHION_DIRS]
    for folder in roots:
        found = {}
        for split, names in _FASHION_FILES.items():
            pair = []
            for name in names:
                candidates = [folder / name, folder / f"{name}.gz"]
                match = next((c for c in candidates if c.is_file()), None)
                if match is None:
                    break
                pair.append(match)
            if len(pair) == 2:
                found[split] = tuple(pair)
        if len(found) == 2:
            return found
    where = root or FASHION_DIRS[0]
    raise DataFilesMissingError(
        f"Fashion-MNIST files not found in {where}: need train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz). Install them with "
        "`apt-get install dataset-fashion-mnist` (Debian / Ubuntu), or give `data: {name: fashion-mnist, "
        "root: FOLDER}` with the standard IDX files."
    )


@register_dataset("fashion-mnist")
def fashion_mnist(root: str | None = None, image_size: int | None = None, val_fraction: float = 0.1,
                  augment: str = "flip", limit: int | None = None, seed: int = 0) -> DataBundle:
    """The real Fashion-MNIST (60k train + 10k test, 28x28 grayscale, 10 classes).

    The official test set is the test split; ``val_fraction`` of the training set is held out for
    validation. ``limit`` keeps only the first N training images (for quick runs).

    Args:
        root: a folder with the four IDX files (default: Debian's ``dataset-fashion-mnist`` package).
        image_size: resize the 28x28 images to this square size (default: keep 28).
        val_fraction: share of the training set held out for validation.
        augment: training augmentation preset (``flip``, ``none``).
        limit: keep only the first N training images.
        seed: the validation split's shuffle.
    """
    files = find_fashion_files(root)
    train_images = torch.from_numpy(_read_idx(files["train"][0]).copy()).unsqueeze(1)
    train_labels = torch.from_numpy(_read_idx(files["train"][1]).astype(np.int64))
    test_images = torch.from_numpy(_read_idx(files["test"][0]).copy()).unsqueeze(1)
    test_labels = torch.from_numpy(_read_idx(files["test"][1]).astype(np.int64))
    if limit:
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    images = torch.cat([train_images, test_images])
    labels = torch.cat([train_labels, test_labels])
    size = (image_size, image_size) if image_size else None
    info = DataInfo("image", 1, size or (28, 28), (0.286,), (0.353,), FASHION_CLASSES, {"label": "classification"},
                    {"dataset": "fashion-mnist"})
    train_part, val_idx, _ = split_indices(len(train_images), val_fraction, 0.0, seed)
    test_idx = np.arange(len(train_images), len(images))
    return _tensor_splits(images, labels, info, train_part, val_idx, test_idx, augment)


class _FileImages(Dataset):
    """``(path, label)`` samples read with `read_image`; ids (`sample_ids`) are paths relative to ``root``."""

    def __init__(self, samples: list[tuple[str, int]], in_channels: int, transform,
                 root: str | Path | None = None) -> None:
        self.samples, self.in_channels, self.transform = samples, in_channels, transform
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def sample_ids(self) -> list[str]:
        from edh.data.fingerprint import relative_id

        return [relative_id(path, self.root) if self.root else Path(path).as_posix() for path, _ in self.samples]

    def __getitem__(self, index: int):
        from edh.data.base import item_error
        from edh.data.files import read_image

        path, label = self.samples[index]
        try:
            image = self.transform(read_image(path, self.in_channels))
        except Exception as error:  # one clear error naming the file, also from a DataLoader worker
            raise item_error(f"image {path}", error) from None
        return image, {"label": torch.tensor(label)}


def _folder_replay(folder: Path):
    """`DataBundle.replay` of an image folder: recorded ids ``class/file`` still on disk, labelled by the
    recorded class order, read with the recorded channels, size and normalisation."""

    def replay(ids: list[str], info: DataInfo) -> _FileImages:
        index = {name: i for i, name in enumerate(info.class_names)}
        samples = [(str(folder / i), index[i.split("/", 1)[0]]) for i in ids
                   if i.split("/", 1)[0] in index and (folder / i).is_file()]
        return _FileImages(samples, info.in_channels, eval_transform(info.image_size, info.mean, info.std), folder)

    return replay


@register_dataset("image-folder")
def image_folder(root: str, image_size: int = 224, in_channels: int = 3, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, augment: str = "flip", mean: list[float] | None = None,
                 std: list[float] | None = None, seed: int = 0) -> DataBundle:
    """A user's images in ``root/<class name>/*.png|jpg|...`` (torchvision's ImageFolder layout).

    Classes are the sub-folder names, sorted. Images are read with PIL (upright: EXIF orientation
    applied; see `edh.data.files` for how 16-bit and float images are scaled), converted to
    ``in_channels`` (1: grayscale, 3: RGB, 4: RGBA) and resized to ``image_size``. The run records
    each split's files (``data_files.json``), which ``edh eval`` compares with the folder.

    Args:
        root: the folder holding one sub-folder of images per class.
        image_size: the square size images are resized to.
        in_channels: channels images are read as (1, 3 or 4).
        val_fraction, test_fraction: shares of the images held out (per class, by ``seed``).
        augment: training augmentation preset (``flip``, ``none``).
        mean, std: normalisation per channel (default ImageNet's for RGB).
        seed: the split's shuffle.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    folder = Path(root)
    if not folder.is_dir():
        raise DataFilesMissingError(f"image folder {folder} does not exist; expected {folder}/<class>/<image files>")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataFilesMissingError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image files>")
    samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                           allow_empty=True)
    if not samples:
        raise DataFilesMissingError(f"{folder} holds no images with extensions {', '.join(IMG_EXTENSIONS)}")
    if len(classes) < 2:
        raise ValueError(f"{folder} has only one class ({classes[0]}); a classifier needs at least two")
    default_mean = {1: (0.5,), 3: (0.485, 0.456, 0.406)}.get(in_channels, (0.5,) * in_channels)
    default_std = {1: (0.5,), 3: (0.229, 0.224, 0.225)}.get(in_channels, (0.25,) * in_channels)
    info = DataInfo("image", in_channels, (image_size, image_size), tuple(mean or default_mean),
                    tuple(std or default_std), classes, {"label": "classification"}, {"dataset": "image-folder"})
    train_idx, val_idx, test_idx = split_indices(len(samples), val_fraction, test_fraction, seed)
    train_tf = train_transform(info.image_size, info.mean, info.std, augment)
    eval_tf = eval_transform(info.image_size, info.mean, info.std)
    pick = lambda idx: [samples[i] for i in idx]  # noqa: E731
    return DataBundle(_FileImages(pick(train_idx), in_channels, train_tf, folder),
                      _FileImages(pick(val_idx), in_channels, eval_tf, folder),
                      _FileImages(pick(test_idx), in_channels, eval_tf, folder), info, replay=_folder_replay(folder))
