"""Property tests of the file loaders: random COCO JSON (structure-aware, and garbage), random TSV text
(random bytes and unicode, tabs, line endings, encodings) and random mask images reach one of two
outcomes only: success, or edh's own error (`EdhError`) with a message. Never another exception.

Each property's examples are few (``max_examples`` 30-60) so the file runs in well under a minute;
``EDH_PROPERTY_SCALE=20 pytest tests/test_reliability_properties.py`` runs 20 times as many.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from edh.core.errors import EdhError
from edh.data.base import build_data

SCALE = float(os.environ.get("EDH_PROPERTY_SCALE", "1"))  # e.g. 20 for a deeper local hunt


def examples(count: int) -> settings:
    """``count`` examples (times ``$EDH_PROPERTY_SCALE``), no deadline, fixtures reused across examples."""
    return settings(max_examples=max(1, int(count * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


SETTINGS = examples(40)


def outcome(call):
    """``call()``'s result, or the `EdhError` it raised (whose message must say something); any other
    exception propagates and fails the property, with the example that caused it."""
    try:
        result = call()
    except EdhError as error:
        assert str(error).strip(), f"{type(error).__name__} without a message"
        _event(f"refused: {type(error).__name__}")
        return error
    _event("loaded")
    return result


def _event(text: str) -> None:
    """Count an outcome (``pytest --hypothesis-show-statistics`` shows the counts); a no-op outside ``@given``."""
    from hypothesis.errors import InvalidArgument

    try:
        event(text)
    except InvalidArgument:
        pass


def load_every_item(bundle) -> None:
    for part in (bundle.train, bundle.val, bundle.test):
        for index in range(len(part)):
            part[index]


# ---- COCO -------------------------------------------------------------------------------------------
IMAGE_FILES = {"a.png": (16, 12), "b.png": (20, 20), "c.jpg": (9, 30)}  # name -> (width, height)
BROKEN_FILES = ["corrupt.png", "gone.png", "folder.png", ""]


@pytest.fixture(scope="module")
def coco_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("coco") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (width, height) in IMAGE_FILES.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "folder.png").mkdir()
    return folder


junk = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.floats(), st.integers(-3, 3) | st.sampled_from([2 ** 70, 10 ** 400, -10 ** 400]),
                 st.lists(st.integers(-2, 40), max_size=5), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
coordinate = st.one_of(st.integers(-3, 35), st.floats(-3, 35), st.floats(), st.booleans(), st.just(float("nan")),
                       st.just(10 ** 400))
small_id = st.integers(0, 6)
image_entry = st.fixed_dictionaries(
    {"id": small_id | junk},
    optional={"file_name": st.sampled_from([*IMAGE_FILES, *BROKEN_FILES]) | junk,
              "width": st.integers(1, 40) | st.floats(0, 50) | junk,
              "height": st.integers(1, 40) | st.floats(0, 50) | junk})
annotation_entry = st.fixed_dictionaries(
    {"id": st.integers(0, 30) | junk},
    optional={"image_id": small_id | junk, "category_id": st.integers(0, 4) | junk,
              "bbox": st.lists(coordinate, min_size=3, max_size=5) | junk, "iscrowd": st.sampled_from([0, 1]) | junk,
              "area": junk})
category_entry = st.fixed_dictionaries({"id": st.integers(0, 4) | junk}, optional={"name": st.text(max_size=5) | junk})
random_coco = st.fixed_dictionaries({}, optional={
    "images": st.lists(image_entry, max_size=6) | junk,
    "annotations": st.lists(annotation_entry, max_size=10) | junk,
    "categories": st.lists(category_entry, max_size=4) | junk,
    "info": junk})


RARELY = st.sampled_from([False] * 9 + [True])
RARELY_NOT = st.sampled_from([True] * 3 + [False])


@st.composite
def mostly_valid_coco(draw):
    """A COCO file that passes the file-level checks more often than not, with random annotations."""
    names = draw(st.lists(st.sampled_from([*IMAGE_FILES, "gone.png"]), min_size=1, max_size=4, unique=True))
    images = []
    for index, name in enumerate(names):
        image = {"id": index + 1, "file_name": name}
        if name in IMAGE_FILES and draw(st.booleans()):
            width, height = IMAGE_FILES[name]
            image.update(width=draw(st.sampled_from([width, width, width + 1])), height=height)
        images.append(image)
    annotations = []
    for ann_id in range(draw(st.integers(1, 8))):
        index = draw(st.integers(0, len(names) - 1))
        width, height = IMAGE_FILES.get(names[index], (10, 10))
        if draw(RARELY_NOT):  # a valid box
            x, y = draw(st.integers(0, width // 2)), draw(st.floats(0, height / 2))
            bbox = [x, y, draw(st.integers(1, width - x)), draw(st.floats(0.5, height - y))]
        else:
            bbox = [draw(st.floats(-1, 15) | st.integers(0, 10)), draw(st.integers(0, 10)),
                    draw(st.floats(0.5, 20) | st.integers(-2, 20) | st.booleans() | st.just(float("inf"))),
                    draw(st.integers(-1, 12))]
        annotation = {"id": ann_id, "image_id": index + 1 if draw(RARELY_NOT) else draw(st.integers(0, len(names) + 1) | st.booleans()),
                      "category_id": draw(st.sampled_from([1, 2, 2, 9, True])), "bbox": bbox,
                      "iscrowd": draw(st.sampled_from([0, 0, 0, 1, "0", None]))}
        if draw(RARELY):
            annotation.pop(draw(st.sampled_from(sorted(annotation))))
        annotations.append(annotation)
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 2}]}
    if draw(RARELY):
        data.pop(draw(st.sampled_from(sorted(data))))
    return data


json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                      max_size=4), max_leaves=12)


def load_coco(folder: Path, path: Path, strict: bool, fractions: tuple[float, float]):
    def run():
        bundle = build_data("coco", {"images": str(folder), "annotations": str(path), "strict": strict,
                                     "val_fraction": fractions[0], "test_fraction": fractions[1]}, seed=0)
        load_every_item(bundle)
        for part in (bundle.train, bundle.val, bundle.test):
            for image in part.images:  # what was kept is usable: finite boxes inside their image, labels 1..K
                assert image.path.is_file() and image.labels.ge(1).all()
                boxes = image.boxes
                assert boxes.isfinite().all() and (boxes[:, 2:] > boxes[:, :2]).all() and boxes.ge(0).all()
        return bundle

    return outcome(run)


@SETTINGS
@given(data=random_coco, strict=st.booleans())
def test_random_coco_structures_load_or_raise_edh_errors(coco_images, tmp_path, data, strict):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    load_coco(coco_images, path, strict, (0.0, 0.0))


@examples(60)
@given(data=mostly_valid_coco(), strict=st.booleans(), fractions=st.sampled_from([(0.0, 0.0), (0.3, 0.3)]))
def test_mostly_valid_coco_files_load_or_raise_edh_errors(coco_images, tmp_path, data, strict, fractions):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    result = load_coco(coco_images, path, strict, fractions)
    if not isinstance(result, EdhError):  # nothing lost: every annotation is kept, reported, or a counted crowd
        from edh.data.coco_json import read_coco

        found = read_coco(path, coco_images)
        kept = sum(len(image.boxes) for image in found.images)
        reported = sum(issue.annotation_id is not None for issue in found.issues)
        assert kept + reported + found.ignored["crowd"] == len(data["annotations"])
        assert kept == sum(len(image.boxes) for part in (result.train, result.val, result.test) for image in part.images)
        assert not strict or not found.issues


@SETTINGS
@given(content=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | st.sampled_from([b"\xef\xbb\xbf{}", b"\xff\xfe{\x00", b"{" * 5000, b"[" * 50000, b'{"images": NaN}']))
def test_garbage_coco_files_are_edh_errors(coco_images, tmp_path, content):
    path = tmp_path / "annotations.json"
    path.write_bytes(content)
    result = load_coco(coco_images, path, False, (0.0, 0.0))
    assert isinstance(result, EdhError)  # nothing in there is a usable detection set


# ---- TSV --------------------------------------------------------------------------------------------
ENCODINGS = {  # name -> text -> bytes
    "utf-8": lambda text: text.encode("utf-8"),
    "utf-8-sig": lambda text: text.encode("utf-8-sig"),
    "utf-16": lambda text: text.encode("utf-16"),
    "utf-16-be-bom": lambda text: ("\ufeff" + text).encode("utf-16-be"),
    "utf-32": lambda text: text.encode("utf-32"),
}
sentence = st.text(st.characters(exclude_characters="\t\r\n\x00\ufeff", exclude_categories=("Cs",)),
                   min_size=1, max_size=12).filter(lambda s: s.strip())


@SETTINGS
@given(pairs=st.lists(st.tuples(sentence, sentence), min_size=1, max_size=6),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), final=st.booleans(), encoding=st.sampled_from(sorted(ENCODINGS)))
def test_tsv_in_any_supported_encoding_and_line_ending_reads_back_exactly(tmp_path, pairs, newline, final, encoding):
    from edh.data.text import read_tsv

    text = newline.join(f"{s}\t{t}" for s, t in pairs) + (newline if final else "")
    path = tmp_path / "pairs.tsv"
    path.write_bytes(ENCODINGS[encoding](text))
    assert read_tsv(path) == [(s.strip(), t.strip()) for s, t in pairs]


tsv_pieces = st.lists(st.sampled_from(["\t", "\n", "\r", "\r\n", " ", "a", "é", "\ufeff", "\x00", "€"])
                      | st.text(max_size=4) | st.binary(max_size=4), max_size=20)


@SETTINGS
@given(pieces=tsv_pieces, encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252"]),
       skip=st.booleans())
def test_random_tsv_bytes_read_or_raise_edh_errors(tmp_path, pieces, encoding, skip):
    from edh.data.text import read_tsv

    data = b"".join(p if isinstance(p, bytes) else p.encode(encoding, errors="replace") for p in pieces)
    path = tmp_path / "pairs.tsv"
    path.write_bytes(data)
    result = outcome(lambda: read_tsv(path, skip_bad_lines=skip))
    if not isinstance(result, EdhError):
        for pair in result:
            for side in pair:
                assert side and side == side.strip() and not set(side) & {"\r", "\n", "\t", "\x00"}
                assert not side.startswith("\ufeff")


@examples(30)
@given(data=st.binary(max_size=120) | st.lists(st.tuples(sentence, sentence), max_size=5).map(
    lambda pairs: "".join(f"{s}\t{t}\n" for s, t in pairs).encode("utf-8")), skip=st.booleans())
def test_the_tsv_dataset_builds_or_raises_edh_errors(tmp_path, data, skip):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(data)
    outcome(lambda: load_every_item(build_data("tsv", {"path": str(path), "tokenizer": "char", "val_fraction": 0.0,
                                                       "test_fraction": 0.0, "skip_bad_lines": skip}, seed=0)))


@examples(30)
@given(content=st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_tokenizer_files_are_edh_errors(tmp_path, content):
    from edh.data.tokenizer import TextTokenizer

    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    outcome(lambda: TextTokenizer.from_file(path))


# ---- masks (edh/data/masks.py) ----------------------------------------------------------------------
MASK_MODES = ["L", "P", "I;16", "I", "1", "RGB", "RGBA", "LA", "F"]


def _mask_image(mode: str, width: int, height: int, values: np.ndarray) -> Image.Image:
    if mode in ("RGB", "RGBA", "LA"):
        channels = {"RGB": 3, "RGBA": 4, "LA": 2}[mode]
        return Image.fromarray(np.dstack([values.astype(np.uint8)] * channels), mode)
    if mode == "I;16":
        return Image.fromarray(values.astype(np.uint16))
    if mode == "I":
        return Image.fromarray(values.astype(np.int32))
    if mode == "F":
        return Image.fromarray(values.astype(np.float32))
    image = Image.fromarray(values.astype(np.uint8))
    return image.convert("1") if mode == "1" else image.convert("P") if mode == "P" else image


@st.composite
def mask_files(draw):
    """``(mask bytes or image, suffix)``: a random mode / size / values PNG (JPEG sometimes; TIFF for 32-bit), or junk."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=60)), ".png"
    mode = draw(st.sampled_from(MASK_MODES))
    width, height = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    high = draw(st.sampled_from([1, 3, 255, 70000, 2 ** 31 - 1]))
    low = draw(st.sampled_from([0, 0, -5]))
    values = np.asarray(draw(st.lists(st.integers(low, high), min_size=width * height, max_size=width * height)))
    values = values.reshape(height, width)
    if mode in ("L", "P", "1", "RGB", "RGBA", "LA"):
        values = values.clip(0, 255)
    elif mode == "I;16":
        values = values.clip(0, 65535)
    return _mask_image(mode, width, height, values), draw(st.sampled_from([".png", ".jpg"])) if mode in (
        "L", "RGB") else ".tif" if mode in ("F", "I") else ".png"


def _save(item, path: Path) -> Path:
    content, suffix = item
    path = path.with_suffix(suffix)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content.save(path)
    return path


@SETTINGS
@given(mask=mask_files())
def test_random_masks_read_or_raise_edh_errors(tmp_path, mask):
    from edh.data.masks import read_mask

    path = _save(mask, tmp_path / "mask")
    result = outcome(lambda: read_mask(path))
    if not isinstance(result, EdhError):
        assert result.ndim == 2 and result.dtype == np.int64


@examples(30)
@example(masks=[(Image.fromarray(np.zeros((1, 1), np.uint8)).convert("P"), ".png")], same_size=True, num_classes=None,
         ignore_index=0, image_size=None)  # every pixel is ignore_index (found by this property: StopIteration)
@given(masks=st.lists(mask_files(), min_size=1, max_size=3), same_size=st.booleans(),
       num_classes=st.none() | st.integers(1, 300), ignore_index=st.none() | st.sampled_from([0, 255]),
       image_size=st.none() | st.just(8))
def test_random_mask_datasets_build_or_raise_edh_errors(tmp_path, masks, same_size, num_classes, ignore_index,
                                                         image_size):
    root = tmp_path / "data"
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index, mask in enumerate(masks):
        path = _save(mask, root / "masks" / f"m{index}")
        size = mask[0].size if not isinstance(mask[0], bytes) and same_size else (5, 4)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            root / "images" / f"{path.stem}.png")
    outcome(lambda: load_every_item(build_data(
        "image-masks", {"root": str(root), "num_classes": num_classes, "ignore_index": ignore_index,
                        "image_size": image_size, "val_fraction": 0.0, "test_fraction": 0.0, "augment": "none"},
        seed=0)))


def test_outcome_lets_other_exceptions_through():
    with pytest.raises(ZeroDivisionError):
        outcome(lambda: 1 / 0)
    assert math.isnan(outcome(lambda: float("nan")))
