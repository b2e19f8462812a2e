"""``image-masks``: a user's segmentation data, an images folder and a masks folder.

Layout: ``root/images/<name>.<png|jpg|...>`` and ``root/masks/<name>.png`` (same file stem). A
mask holds one class index per pixel: a grayscale (``L``, 16-bit) or palette (``P``) PNG, read as
indices, never as colours. Images and masks are read upright (EXIF orientation applied to both).
Every mask is checked when the dataset is built; each of these is a `MaskReadError` naming the
file, the values found and the option to set:

- a mask missing for an image, a mask whose size differs from its image, an RGB mask;
- a JPEG mask (lossy compression turns 3 class ids into dozens of values);
- a class id outside ``0..num_classes-1`` (other than ``ignore_index``);
- with ``num_classes`` left to the data (largest id + 1): a 255 "void" value without
  ``ignore_index``; ids with gaps (``0, 1, 5``: set ``num_classes`` to accept classes that never
  occur); more than `MAX_INFERRED_CLASSES` distinct ids (set ``num_classes`` to confirm).

Items: ``(image (C, H, W) float normalised, {"mask": (H, W) int64})``. Sizes:

- by default every image keeps its own size (``image_size: N`` resizes all to N x N, the mask
  nearest-neighbour); training items are random ``crop_size`` windows when that is set;
- training batches need one size: images that differ, without ``image_size`` or ``crop_size``, are
  refused when the dataset is built (the error names two of them);
- val / test items of different sizes are batched by `edh.data.augment.PadCollate` (the bundle's
  ``collate_fn``): images padded at the bottom / right with 0, masks with the ignore value, so
  padding never counts in loss or metrics. Without ``ignore_index`` the dataset then marks padding
  (and pixels from outside an augmented image) with `PAD_IGNORE` (255) and says so in its head
  defaults (``ignore_index: 255``, which the segmentation head takes).

Training augmentation (``augment``, train split only) moves image and mask together
(`edh.data.augment`); pixels from outside the image get the ignore value (0 = background without one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edh.core.errors import DataItemError, SpecError
from edh.data.base import DataBundle, DataFilesMissingError, DataInfo, split_indices
from edh.data.files import ImageReadError, upright_size
from edh.core.registry import register_dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PAD_IGNORE = 255
"""Mask value of batch padding when images keep sizes that differ and ``ignore_index`` is not set."""
MAX_INFERRED_CLASSES = 64
"""More distinct mask values than this, with ``num_classes`` left to the data, are refused (photos, artefacts)."""


class MaskReadError(DataItemError):
    """A mask that cannot be used; the message names the file and the fix."""


def _values(ids) -> str:
    ids = [int(i) for i in ids]
    return f"{ids}" if len(ids) <= 12 else f"[{', '.join(map(str, ids[:6]))}, ..., {', '.join(map(str, ids[-3:]))}]"


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as an ``(H, W)`` int64 array of class indices (palette PNGs give their indices), upright."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"):
                raise MaskReadError(
                    f"mask {path} is a {mask.mode} image; a mask must hold one class index per pixel. Save it as "
                    "a grayscale (mode L) or palette (mode P) PNG whose pixel values are class ids 0, 1, 2..."
                )
            if mask.format == "JPEG" or mask.mode == "F":
                values = np.unique(np.asarray(mask))
                what = "a JPEG file: lossy compression changes pixel values" if mask.format == "JPEG" else \
                    "a float image: class ids are integers"
                raise MaskReadError(
                    f"mask {path} is {what} ({values.size} distinct values found: {_values(values)}), so its "
                    "values are not class ids. Save masks as PNG (mode L or P) whose pixels are class ids 0, 1, 2..."
                )
            upright = ImageOps.exif_transpose(mask)
            return np.asarray(upright if upright is not None else mask).astype(np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise MaskReadError(f"cannot read mask {path}: {error}. Is it a complete PNG file?") from None


def image_size_of(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file as it is read (EXIF orientation applied), from its header."""
    return upright_size(path)


def pair_files(root: Path, images: str = "images", masks: str = "masks") -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs matched by file stem; a missing folder or mask is an error naming it."""
    image_dir, mask_dir = root / images, root / masks
    for folder, what in ((image_dir, "images"), (mask_dir, "masks")):
        if not folder.is_dir():
            raise DataFilesMissingError(
                f"{what} folder {folder} does not exist; image-masks expects {root}/{images}/NAME.png|jpg and "
                f"{root}/{masks}/NAME.png with the same NAME"
            )
    image_files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not image_files:
        raise DataFilesMissingError(f"{image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    mask_files = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    missing = [p.name for p in image_files if p.stem not in mask_files]
    if missing:
        raise DataFilesMissingError(
            f"{len(missing)} image(s) have no mask in {mask_dir}: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}. Each image NAME.ext needs a mask {mask_dir}/NAME.png"
        )
    return [(p, mask_files[p.stem]) for p in image_files]


def check_masks(pairs: list[tuple[Path, Path]], num_classes: int | None, ignore_index: int | None) -> int:
    """Check every mask against its image and the class range; returns the number of classes.

    With ``num_classes`` unset, it is the largest id found (``ignore_index`` aside) plus one, and the
    ids must look like class ids: no 255 without ``ignore_index``, no gaps, at most
    `MAX_INFERRED_CLASSES` of them (each refused with the values found and the option to set).
    """
    largest = 0
    where: dict[int, Path] = {}  # each id found -> the first mask holding it
    for image_path, mask_path in pairs:
        mask = read_mask(mask_path)
        try:
            size = image_size_of(image_path)
        except Exception as error:  # PIL's errors (unreadable, not an image): name the file
            raise ImageReadError(f"cannot read image {image_path}: {error}. Is it a PNG/JPEG/BMP/TIFF file, "
                                 "and complete?") from None
        if mask.shape != size:
            raise MaskReadError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
                f"{size[1]}x{size[0]}; a mask must have exactly its image's size"
            )
        ids = np.unique(mask)
        for value in ids.tolist():
            where.setdefault(int(value), mask_path)
        if ignore_index is None and num_classes is None and 255 in ids:
            raise MaskReadError(
                f"mask {mask_path} holds the values {_values(ids)} and data.ignore_index is not set: 255 usually marks "
                "'void' pixels (boundaries, unlabelled). Set data.ignore_index: 255 to leave them out of loss and "
                "metrics, or set data.num_classes (256 if 255 really is a class)"
            )
        if ignore_index is not None:
            ids = ids[ids != ignore_index]
        if ids.size and ids.min() < 0:
            raise MaskReadError(f"mask {mask_path} holds negative class ids {ids[ids < 0][:5].tolist()}")
        if num_classes is not None and ids.size and ids.max() >= num_classes:
            bad = ids[ids >= num_classes][:5].tolist()
            hint = "" if ignore_index is not None else " (or set data.ignore_index for a 'void' value such as 255)"
            raise MaskReadError(
                f"mask {mask_path} holds class id(s) {bad}, outside 0..{num_classes - 1} (data.num_classes is "
                f"{num_classes}). Fix the mask or raise data.num_classes{hint}"
            )
        largest = max(largest, int(ids.max()) if ids.size else 0)
    if num_classes is not None:
        return num_classes
    found = sorted(v for v in where if v != ignore_index)
    if len(found) > MAX_INFERRED_CLASSES:
        raise MaskReadError(
            f"the masks hold {len(found)} distinct values ({_values(found)}; e.g. {where[found[-1]]} holds "
            f"{found[-1]}): that looks like an image or compression artefacts, not class ids. Save masks as PNG "
            f"whose pixels are class ids, or, if there really are {largest + 1} classes, set data.num_classes: "
            f"{largest + 1}"
        )
    if not found:
        raise MaskReadError(
            f"every mask pixel is the ignore_index {ignore_index} (e.g. {next(iter(where.values()), 'the masks')}): "
            "there is no class to learn. Check data.ignore_index, or give masks whose pixels are class ids"
        )
    gaps = sorted(set(range(largest + 1)) - set(found))
    if gaps:
        first = next(v for v in found if v > gaps[0])
        raise MaskReadError(
            f"the masks hold values {_values(found)}, with gaps: {_values(gaps)} never occur (e.g. {where[first]} "
            f"holds {first}), so they do not look like class ids 0..{largest}. Remap the masks to consecutive ids, "
            f"set data.num_classes: {largest + 1} to accept classes that never occur, or set data.ignore_index "
            "for a 'void' value"
        )
    return largest + 1


class ImageMaskDataset(Dataset):
    """Image files with their masks, transformed jointly (resize; the mask nearest-neighbour).

    Args:
        pairs: ``(image path, mask path)``.
        in_channels: channels the images are read as (1, 3 or 4).
        transform: a torchvision ``v2`` transform taking ``(tv_tensors.Image, tv_tensors.Mask)``.
        root: the dataset's folder; sample ids (`sample_ids`) are the image paths relative to it.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], in_channels: int, transform, root: Path | None = None) -> None:
        self.pairs, self.in_channels, self.transform, self.root = pairs, in_channels, transform, root

    def __len__(self) -> int:
        return len(self.pairs)

    def sample_ids(self) -> list[str]:
        from edh.data.fingerprint import relative_id

        return [relative_id(image, self.root) if self.root else Path(image).as_posix() for image, _ in self.pairs]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision import tv_tensors

        from edh.data.base import item_error
        from edh.data.files import read_image

        image_path, mask_path = self.pairs[index]
        try:
            image = tv_tensors.Image(read_image(image_path, self.in_channels))
            mask = tv_tensors.Mask(torch.from_numpy(read_mask(mask_path)))
            image, mask = self.transform(image, mask)
        except Exception as error:  # one clear error naming the files, also from a DataLoader worker
            raise item_error(f"image {image_path} with mask {mask_path}", error) from None
        return image.as_subclass(torch.Tensor), {"mask": mask.as_subclass(torch.Tensor).long()}


def _masks_replay(root: Path, images: str, masks: str, ignore_index: int | None):
    """`DataBundle.replay` of image-masks: the recorded images still on disk (with their masks, checked
    against the recorded number of classes), read with the recorded channels, size (``None``: native, batched
    by the bundle's `PadCollate`) and normalisation, never augmented or cropped."""

    def replay(ids: list[str], info: DataInfo) -> ImageMaskDataset:
        from edh.data.fingerprint import relative_id

        pairs = {relative_id(image, root): (image, mask) for image, mask in pair_files(root, images, masks)}
        chosen = [pairs[i] for i in ids if i in pairs]
        names = info.extra.get("mask_class_names") or []
        if chosen:
            check_masks(chosen, len(names) or None, ignore_index)
        transform = joint_transform(info.image_size, info.mean, info.std, "none")
        return ImageMaskDataset(chosen, info.in_channels, transform, root)

    return replay


def joint_transform(image_size: int | tuple[int, int] | None, mean: tuple[float, ...], std: tuple[float, ...],
                    augment: str | dict[str, Any] | None = "none", crop_size: tuple[int, int] | None = None,
                    mask_fill: int = 0, in_channels: int = 3):
    """Resize to ``image_size`` when given (images bilinear, masks nearest), then the training steps of
    ``augment`` and the random ``crop_size`` window (`edh.data.augment.augment_pipeline`), then normalise."""
    from torchvision.transforms import v2

    from edh.data.augment import augment_pipeline

    steps: list = []
    if image_size:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        steps.append(v2.Resize(size, antialias=True))
    if augment not in (None, "none") or crop_size:
        steps.append(augment_pipeline(augment, crop_size, mask_fill, in_channels))
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def native_sizes(pairs: list[tuple[Path, Path]], train: list[tuple[Path, Path]], crop_size) -> bool:
    """Whether images kept at their own size differ; a `SpecError` when training images differ and no
    ``crop_size`` gives them one size (a batch needs one), naming two of them and the two ways out."""
    sizes = {image: image_size_of(image) for image, _ in pairs}
    if crop_size is None:
        first = train[0][0] if train else None
        other = next((image for image, _ in train if sizes[image] != sizes[first]), None)
        if other is not None:
            (h1, w1), (h2, w2) = sizes[first], sizes[other]
            raise SpecError(
                f"data.image_size is not set, so image-masks keeps each image's own size, but training images "
                f"differ: {first} is {w1}x{h1} and {other} is {w2}x{h2} (WxH), and a training batch needs one "
                "size. Set data.image_size: N to resize every image to N x N, or data.crop_size: N to train on "
                "random N x N crops (val / test then keep their own sizes, padded per batch)"
            )
    return len(set(sizes.values())) > 1


@register_dataset("image-masks")
def image_masks(root: str, images: str = "images", masks: str = "masks", num_classes: int | None = None,
                class_names: list[str] | None = None, ignore_index: int | None = None, image_size: int | None = None,
                crop_size: int | list[int] | None = None, in_channels: int = 3, val_fraction: float = 0.1,
                test_fraction: float = 0.1, augment: str | dict[str, Any] = "flip", mean: list[float] | None = None,
                std: list[float] | None = None, seed: int = 0) -> DataBundle:
    """A user's images with per-pixel class masks (see the module docstring for the layout).

    Args:
        root: folder holding the ``images`` and ``masks`` sub-folders.
        images, masks: names of those sub-folders.
        num_classes: classes including background (0); default: the largest id in any mask + 1.
        class_names: a name per class (default ``"0", "1", ...``).
        ignore_index: a mask value that marks pixels to leave out of loss and metrics (e.g. 255).
        image_size: side every image and mask is resized to (N x N). Default ``None``: each keeps its
            own size (see the module docstring for batching images of different sizes).
        crop_size: ``N`` or ``[h, w]``: training items are random crops of that size (padded where an
            image is smaller); val / test are not cropped. Default ``None``: no crop.
        in_channels: 1 (grayscale), 3 (RGB) or 4 (RGBA).
        augment: training augmentation, a preset (``flip``: random horizontal flip; ``none``) or a
            mapping of steps (``{hflip: 0.5, vflip: 0.0, rotate: 15, scale: [0.5, 2.0], color: 0.2}``,
            `edh.data.augment.parse_augment`); image and mask move together. Val / test: never.
        mean, std: normalisation (default: ImageNet's for RGB, 0.5 / 0.5 otherwise).
    """
    from edh.data.augment import PadCollate, parse_augment, parse_size

    if class_names is not None:
        if num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"data.class_names has {len(class_names)} names but data.num_classes is {num_classes}")
        num_classes = len(class_names)
    parse_augment(augment)  # a bad augment is refused before any file is read
    crop = parse_size(crop_size, "data.crop_size")
    pairs = pair_files(Path(root), images, masks)
    num_classes = check_masks(pairs, num_classes, ignore_index)
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    default_mean = {3: (0.485, 0.456, 0.406)}.get(in_channels, (0.5,) * in_channels)
    default_std = {3: (0.229, 0.224, 0.225)}.get(in_channels, (0.5,) * in_channels)
    mean_t, std_t = tuple(mean or default_mean), tuple(std or default_std)
    train_idx, val_idx, test_idx = split_indices(len(pairs), val_fraction, test_fraction, seed)
    pick = lambda idx: [pairs[i] for i in idx]  # noqa: E731
    ignore = ignore_index
    if image_size is None and native_sizes(pairs, pick(train_idx), crop) and ignore is None:
        if num_classes > PAD_IGNORE:
            raise SpecError(f"the images differ in size, so val / test batches are padded, and padded mask pixels "
                            f"need a value no class uses; with {num_classes} classes set data.ignore_index to one "
                            "(or data.image_size to resize every image to one size)")
        ignore = PAD_IGNORE  # marks batch padding, left out of loss and metrics
    mask_fill = 0 if ignore is None else ignore
    size = (image_size, image_size) if image_size else None
    mask_defaults = {"num_classes": num_classes, "class_names": names}
    if ignore is not None:
        mask_defaults["ignore_index"] = ignore
    info = DataInfo("image", in_channels, size, mean_t, std_t, [], {"mask": "segmentation"},
                    {"dataset": "image-masks", "mask_class_names": names, "head_defaults": {"mask": mask_defaults}})
    train_tf = joint_transform(image_size, mean_t, std_t, augment, crop, mask_fill, in_channels)
    eval_tf = joint_transform(image_size, mean_t, std_t, "none")
    folder = Path(root)
    return DataBundle(ImageMaskDataset(pick(train_idx), in_channels, train_tf, folder),
                      ImageMaskDataset(pick(val_idx), in_channels, eval_tf, folder),
                      ImageMaskDataset(pick(test_idx), in_channels, eval_tf, folder), info,
                      collate_fn=PadCollate(ignore) if image_size is None else None,
                      replay=_masks_replay(folder, images, masks, ignore_index))
