"""What every dataset gives the trainer: a `DataBundle` of train / val / test splits and their info."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edh.core.builder import validate_options
from edh.core.errors import DataItemError, EdhError
from edh.core.registry import lookup


class DataFilesMissingError(EdhError, FileNotFoundError):
    """A dataset whose files are not on this machine; the message says what provides them."""


@dataclass
class DataInfo:
    """What a model and predict need to know about the data.

    Attributes:
        input_kind: ``image`` or ``tokens``.
        in_channels: image channels.
        image_size: ``(H, W)`` the images are resized to (``None``: kept as they are).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        class_names: names of the classes of a ``label`` target.
        targets: target key -> task word (``label: classification``).
        extra: anything family-specific (vocabulary files, number of mask classes...).
        fingerprint: what the data was when this info was made (`edh.data.fingerprint`): the class
            names in order, the preprocessing, each split's count and the hash of its sample ids
            (or content). ``build_data`` records it; ``edh eval`` / ``predict`` compare the run's
            with the data on disk and with ``data.json``'s own fields. ``None`` in runs from before.
    """

    input_kind: str = "image"
    in_channels: int = 3
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    class_names: list[str] = field(default_factory=list)
    targets: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_kind": self.input_kind, "in_channels": self.in_channels,
            "image_size": list(self.image_size) if self.image_size else None,
            "mean": list(self.mean), "std": list(self.std), "class_names": list(self.class_names),
            "targets": dict(self.targets), "extra": dict(self.extra),
            "fingerprint": copy.deepcopy(self.fingerprint),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataInfo":
        data = dict(data)
        if data.get("image_size"):
            data["image_size"] = tuple(data["image_size"])
        data["mean"], data["std"] = tuple(data.get("mean", (0.0,))), tuple(data.get("std", (1.0,)))
        return cls(**data)


@dataclass
class DataBundle:
    """Train / val / test datasets of ``(inputs, {target_key: target})`` items, and their `DataInfo`.

    ``files`` maps a file name to the text the run folder keeps beside the spec (for example a
    tokenizer fitted on the training split, ``tokenizer.json``; or ``data_files.json``, the sample
    ids of each split, for datasets of files).

    ``replay`` (datasets of files): ``(sample ids, recorded DataInfo) -> Dataset``, the recorded
    samples still on disk, labelled with the recorded classes and preprocessed (eval transform)
    with the recorded preprocessing. ``edh eval --allow-changed-data`` evaluates that when the
    data on disk is no longer what the run trained on.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    info: DataInfo
    collate_fn: Callable[[list[Any]], Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    replay: Callable[[list[str], DataInfo], Dataset] | None = None


def split_indices(count: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Deterministic shuffled train / val / test index arrays from ``seed``."""
    if count == 0:
        raise ValueError("the dataset is empty: there is nothing to split into train / val / test")
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
                         "and leave something to train on")
    order = np.random.default_rng(seed).permutation(count)
    n_test = int(round(count * test_fraction))
    n_val = int(round(count * val_fraction))
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


class ImageTensorDataset(Dataset):
    """In-memory images ``(N, C, H, W)`` uint8 (or float in [0, 1]) with integer labels.

    Each item is ``(image (C, H, W) float, {"label": int64})`` after ``transform``.
    ``content_digest`` (sha256 of the images and labels) goes into the data fingerprint.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.images)

    def content_digest(self) -> str:
        digest = hashlib.sha256()
        for tensor in (self.images, self.labels):
            digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def __getitem__(self, index: int):
        image = self.images[index]
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if self.transform is not None:
            image = self.transform(image)
        return image, {"label": self.labels[index]}


def build_data(name: str, options: dict[str, Any], seed: int = 0) -> DataBundle:
    """The registered dataset ``name`` built with ``options`` (checked against its signature).

    Every dataset builder takes ``seed``, which fixes its splits (and any generated content).
    The bundle's ``info.fingerprint`` is recorded here (unless the builder set one), and, for
    datasets of files, ``files["data_files.json"]`` lists each split's sample ids.
    """
    builder = lookup("dataset", name, "data.name")
    clean = validate_options(builder, {**options, "seed": seed}, "data", f"dataset {name!r}")
    bundle = builder(**clean)
    if isinstance(bundle, DataBundle) and bundle.info.fingerprint is None:
        from edh.data.fingerprint import record

        record(name, bundle)
    return bundle


def item_error(what: str, error: Exception) -> Exception:
    """The error to raise for a sample that failed to load: ``error`` itself when edh's (it names the
    file), else a `DataItemError` naming ``what`` (the file) and the original error, so that its
    message survives a DataLoader worker."""
    if isinstance(error, EdhError):
        return error
    return DataItemError(f"cannot load {what}: {type(error).__name__}: {error}")
