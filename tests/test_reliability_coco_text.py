"""Nothing lost, nothing silent: COCO JSON and text files (docs/_reliability_coco_text.md).

COCO: every field of images / annotations / categories is checked (types, ranges, missing keys,
duplicates); what cannot be used is refused, bad annotations are skipped and counted (or refused with
``strict``), and every message names the file, the annotation id and the image file.
Text: UTF-8 (its byte-order mark removed), UTF-16 / UTF-32 with a byte-order mark, CRLF / CR / LF;
anything else is refused with the file, the line, the byte offset and the fix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edh.core.errors import DataError, EdhError, SpecError
from edh.data.base import build_data
from edh.data.coco_json import CocoAnnotationError, CocoFilesMissingError, read_coco
from edh.data.text import read_ding_pairs, read_tsv
from edh.data.textfiles import TextEncodingError, TextFileMissingError, decode_text, read_lines

CATEGORIES = [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]


# ---- COCO fixtures ----------------------------------------------------------------------------------
def write_images(folder: Path, count: int = 4, size: tuple[int, int] = (32, 24)) -> list[str]:
    """``count`` RGB PNGs of ``size`` (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for index in range(count):
        name = f"im_{index}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def coco_file(root: Path, edit=None, count: int = 4) -> tuple[Path, Path]:
    """A valid COCO file over ``count`` 32x24 images (one 10x8 box each), changed by ``edit(data)``."""
    folder = root / "images"
    names = write_images(folder, count)
    data = {
        "images": [{"id": 10 + i, "file_name": name, "width": 32, "height": 24} for i, name in enumerate(names)],
        "annotations": [{"id": 100 + i, "image_id": 10 + i, "category_id": 3 if i % 2 else 7,
                         "bbox": [2, 3, 10, 8], "iscrowd": 0} for i in range(count)],
        "categories": [dict(c) for c in CATEGORIES],
    }
    if edit is not None:
        edit(data)
    path = root / "annotations.json"
    path.write_text(json.dumps(data))  # NaN / Infinity are written as JSON's non-standard literals
    return folder, path


def build(folder: Path, path: Path, **options):
    return build_data("coco", {"images": str(folder), "annotations": str(path), "val_fraction": 0.0,
                               "test_fraction": 0.0, **options}, seed=0)


# ---- COCO: refused ----------------------------------------------------------------------------------
def test_a_training_file_without_annotations_is_refused(tmp_path):
    folder, path = coco_file(tmp_path, lambda d: d.pop("annotations"))
    with pytest.raises(CocoAnnotationError, match=r"annotations\.json has no 'annotations' list.*4 images hold no "
                                                  r"boxes.*image-info file"):
        build(folder, path)


def test_a_training_file_whose_boxes_are_all_gone_is_refused(tmp_path):
    folder, path = coco_file(tmp_path, lambda d: d.update(annotations=[]))
    with pytest.raises(CocoAnnotationError, match=r"no box to train on: 0 annotations"):
        build(folder, path)
    folder, path = coco_file(tmp_path / "bad", lambda d: [a.update(bbox=[0, 0, 0, 5]) for a in d["annotations"]])
    with pytest.raises(CocoAnnotationError, match=r"no box to train on: 4 annotations, 4 skipped as bad"):
        build(folder, path)


def test_a_training_split_without_boxes_is_refused(tmp_path):
    def one_box(data):
        data["annotations"] = data["annotations"][:1]

    folder, path = coco_file(tmp_path, one_box, count=10)
    errors = []
    for seed in range(12):  # some seed puts the only box into val / test
        try:
            build_data("coco", {"images": str(folder), "annotations": str(path), "val_fraction": 0.3,
                                "test_fraction": 0.3}, seed=seed)
        except CocoAnnotationError as error:
            errors.append(str(error))
    assert errors and all("training split" in e and "holds no box" in e and "val_fraction" in e for e in errors)


def test_a_held_out_file_without_annotations_is_a_counted_warning(tmp_path, caplog):
    folder, path = coco_file(tmp_path)
    _, val_path = coco_file(tmp_path / "val", lambda d: d.pop("annotations"))
    with caplog.at_level(logging.WARNING, logger="edh"):
        bundle = build_data("coco", {"images": str(folder), "annotations": str(path), "val_images":
                                     str(tmp_path / "val" / "images"), "val_annotations": str(val_path)}, seed=0)
    assert "has no 'annotations' list: its 4 images are scored as holding no objects" in caplog.text
    assert bundle.info.extra["coco_images_without_boxes"] == {"train": 0, "val": 4, "test": 4}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, -5, True, "32", None, 2 ** 40])
@pytest.mark.parametrize("key", ["width", "height"])
def test_a_bad_width_or_height_is_refused_naming_the_image(tmp_path, key, value):
    folder, path = coco_file(tmp_path, lambda d: d["images"][1].update({key: value}))
    with pytest.raises(CocoAnnotationError, match=rf"image 11 \(im_1\.png\) has {key} .*positive number of pixels"):
        build(folder, path)


def test_a_missing_width_and_height_are_read_from_the_file(tmp_path):
    def no_size(data):
        for image in data["images"]:
            image.pop("width")
            image.pop("height")
        data["annotations"][0]["bbox"] = [20, 3, 13, 8]  # x + w = 33 > 32: outside the real 32x24 image

    folder, path = coco_file(tmp_path, no_size)
    found = read_coco(path, folder)
    assert [str(i) for i in found.issues] == ["annotation 100 (image 10, im_0.png): box [20, 3, 13, 8] lies outside "
                                              "its 32x24 image"]
    assert [len(i.boxes) for i in found.images] == [0, 1, 1, 1]
    (folder / "im_2.png").write_bytes(b"not an image")
    with pytest.raises(CocoAnnotationError, match=r"image 12 \(.*im_2\.png\) has no width / height, and they cannot "
                                                  r"be read from the file"):
        read_coco(path, folder)


def test_a_declared_size_that_is_not_the_files_is_named_when_read(tmp_path):
    folder, path = coco_file(tmp_path, lambda d: d["images"][2].update(width=64))
    bundle = build(folder, path)
    for index, image in enumerate(bundle.train.images):
        if image.image_id != 12:
            bundle.train[index]
            continue
        with pytest.raises(CocoAnnotationError, match=r"image .*im_2\.png is 32x24 pixels \(read upright.*\), but "
                                                      r".*annotations\.json gives image 12 width 64 and height 24"):
            bundle.train[index]


def test_a_duplicate_image_id_is_refused_naming_both_files(tmp_path):
    folder, path = coco_file(tmp_path, lambda d: d["images"][3].update(id=11))
    with pytest.raises(CocoAnnotationError, match=r"image id 11 is used twice: im_1\.png \(images\[1\]\) and "
                                                  r"im_3\.png \(images\[3\]\)"):
        build(folder, path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"][2].update(file_name="im_0.png"), r"file im_0\.png is listed twice, as image 10 and image 12"),
    (lambda d: d["annotations"][2].update(id=100), r"annotation id 100 is used twice: annotations\[0\] \(image 10, "
                                                   r"im_0\.png\) and annotations\[2\] \(image 12, im_2\.png\)"),
    (lambda d: d["categories"].append({"id": 3, "name": "again"}), r"category id 3 is used twice: 'three'"),
    (lambda d: d["images"][0].update(id="10"), r"images\[0\] \(file_name 'im_0\.png'\) has id '10'; an image id must "
                                               r"be an integer"),
    (lambda d: d["images"][0].update(id=True), r"images\[0\] .* has id True"),
    (lambda d: d["images"][1].pop("file_name"), r"image 11 \(images\[1\]\) has file_name None"),
    (lambda d: d["annotations"][1].pop("id"), r"annotations\[1\] \(image_id 11\) has id None; every annotation needs "
                                              r"its own integer id"),
    (lambda d: d["categories"][0].update(name=5), r"category 3 \(categories\[0\]\) has name 5"),
    (lambda d: d["categories"][0].update(id=1.5), r"categories\[0\] \(name 'three'\) has id 1\.5"),
    (lambda d: d.update(categories=[]), r"lists no categories"),
    (lambda d: d.update(images=[]), r"lists no images"),
    (lambda d: d.pop("images"), r"has no 'images' list"),
    (lambda d: d.update(annotations={"id": 1}), r"'annotations' is an object, not a list"),
    (lambda d: d["images"].append("im_9.png"), r"images\[4\] is a string \('im_9\.png'\), not an object"),
])
def test_broken_structure_is_refused_naming_the_entry(tmp_path, edit, message):
    folder, path = coco_file(tmp_path, edit)
    with pytest.raises(CocoAnnotationError, match=message) as error:
        build(folder, path, strict=False)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("content, message", [
    (b"", r"is not valid JSON: Expecting value at line 1, column 1"),
    (b'{"images": [', r"is not valid JSON"),
    (b"[1, 2]", r"its JSON is a list, not an object with images, annotations and categories"),
    (b'{"images": "caf\xe9"}', r"is not UTF-8 text: line 1, byte 15 of the line .*Re-save it as UTF-8"),
    (b"[" * 100_000, r"nested too deeply|not valid JSON"),
])
def test_a_file_that_is_not_coco_json_is_refused(tmp_path, content, message):
    folder = tmp_path / "images"
    write_images(folder, 1)
    (tmp_path / "a.json").write_bytes(content)
    with pytest.raises(CocoAnnotationError, match=message):
        read_coco(tmp_path / "a.json", folder)


def test_utf8_with_bom_and_utf16_json_are_read(tmp_path):
    folder, path = coco_file(tmp_path)
    text = path.read_text()
    for encoding in ("utf-8-sig", "utf-16", "utf-32"):
        path.write_bytes(text.encode(encoding))
        assert len(read_coco(path, folder).images) == 4


def test_missing_files_and_folders_are_edh_errors(tmp_path):
    folder, path = coco_file(tmp_path)
    for images, annotations, message in ((folder, tmp_path / "nope.json", "does not exist"),
                                         (folder, folder, "is a folder"),
                                         (tmp_path / "nowhere", path, "images folder .* does not exist"),
                                         (path, path, "images folder .* is a file")):
        with pytest.raises(CocoFilesMissingError, match=message) as error:
            read_coco(annotations, images)
        assert isinstance(error.value, EdhError) and isinstance(error.value, FileNotFoundError)
    with pytest.raises(CocoFilesMissingError, match=r"none of the 4 images listed in .* is in .*other \(e\.g\. .*\); is data\.images"):
        read_coco(path, (tmp_path / "other").mkdir() or tmp_path / "other")


# ---- COCO: bad annotations, skipped and counted -------------------------------------------------------
BAD_ANNOTATIONS = [  # (annotation change, kind, words of the reason)
    ({"bbox": [True, 2, 5, 5]}, "malformed bbox", "malformed bbox [True, 2, 5, 5]"),
    ({"bbox": [1, 2, float("nan"), 5]}, "malformed bbox", "NaN or infinite"),
    ({"bbox": [1, 2, 5]}, "malformed bbox", "expected [x, y, width, height]"),
    ({"bbox": "1 2 5 5"}, "malformed bbox", "malformed bbox '1 2 5 5'"),
    ({"bbox": [1, 2, 0, 5]}, "degenerate box", "zero or negative width or height"),
    ({"bbox": [25, 2, 10, 5]}, "box outside image", "lies outside its 32x24 image"),
    ({"category_id": 42}, "unknown category", "unknown category id 42"),
    ({"category_id": True}, "malformed category id", "category_id True is not an integer"),
    ({"image_id": 555}, "unknown image", "unknown image id 555"),
    ({"image_id": "11"}, "malformed image id", "image_id '11' is not an integer"),
    ({"iscrowd": "no"}, "malformed iscrowd", "iscrowd 'no' (expected 0 or 1)"),
]


@pytest.mark.parametrize("change, kind, reason", BAD_ANNOTATIONS, ids=[b[1] + ":" + b[2][:20] for b in BAD_ANNOTATIONS])
def test_each_bad_annotation_is_skipped_and_named_or_refused_with_strict(tmp_path, caplog, change, kind, reason):
    folder, path = coco_file(tmp_path, lambda d: d["annotations"][1].update(change))
    with caplog.at_level(logging.WARNING, logger="edh"):
        bundle = build(folder, path)
    assert bundle.info.extra["coco_skipped"] == {kind: 1}
    assert "skipped 1 bad annotations" in caplog.text and "annotation 101 (image " in caplog.text
    assert reason in caplog.text
    if "image_id" not in change:
        assert "annotation 101 (image 11, im_1.png)" in caplog.text  # the annotation id and the image file
    with pytest.raises(CocoAnnotationError, match="1 bad annotations") as error:
        build(folder, path, strict=True)
    assert "annotation 101 (image " in str(error.value) and isinstance(error.value, DataError)


def test_an_image_whose_file_is_missing_is_reported_even_without_annotations(tmp_path, caplog):
    def extra(data):
        data["images"].append({"id": 99, "file_name": "gone.png", "width": 32, "height": 24})

    folder, path = coco_file(tmp_path, extra)
    with caplog.at_level(logging.WARNING, logger="edh"):
        bundle = build(folder, path)
    assert "image 99, gone.png: image file" in caplog.text and "is missing" in caplog.text
    assert bundle.info.extra["coco_skipped"] == {"missing image file": 1} and len(bundle.train) == 4


def test_crowd_and_images_without_boxes_are_counted(tmp_path, caplog):
    def edit(data):
        data["annotations"][0]["iscrowd"] = 1
        data["annotations"][1]["iscrowd"] = True  # a boolean iscrowd is 1

    folder, path = coco_file(tmp_path, edit)
    with caplog.at_level(logging.INFO, logger="edh"):
        bundle = build(folder, path)
    assert bundle.info.extra["coco_ignored"] == {"crowd": 2}
    assert bundle.info.extra["coco_images_without_boxes"] == {"train": 2, "val": 0, "test": 0}
    assert "images without boxes (kept" in caplog.text and "train 2 of 4" in caplog.text


def test_coco_errors_are_edh_data_errors():
    assert issubclass(CocoAnnotationError, DataError) and issubclass(CocoAnnotationError, ValueError)
    assert issubclass(CocoFilesMissingError, EdhError)


# ---- text: encodings and line endings ---------------------------------------------------------------
PAIRS = [("one", "un"), ("café", "café"), ("three", "trois")]


def tsv_text(pairs=PAIRS, newline="\n") -> str:
    return "".join(f"{s}\t{t}{newline}" for s, t in pairs)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom", "utf-32"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_tsv_reads_utf8_utf16_utf32_with_any_line_ending(tmp_path, encoding, newline):
    text = tsv_text(newline=newline)
    if encoding.endswith("-bom"):
        data = "\ufeff".encode(encoding[:-4]) + text.encode(encoding[:-4])
    else:
        data = text.encode(encoding)
    (tmp_path / "p.tsv").write_bytes(data)
    assert read_tsv(tmp_path / "p.tsv") == PAIRS  # the byte-order mark is not in the first sentence


def test_the_encoding_and_line_endings_read_are_named(tmp_path, caplog):
    (tmp_path / "p.tsv").write_bytes(tsv_text(newline="\r\n").encode("utf-16"))
    with caplog.at_level(logging.INFO, logger="edh"):
        read_tsv(tmp_path / "p.tsv")
    assert "p.tsv: read as UTF-16 LE (byte-order mark) with CRLF line endings" in caplog.text


def test_mixed_line_endings_and_no_final_newline(tmp_path):
    (tmp_path / "p.tsv").write_bytes(b"one\tun\r\ncaf\xc3\xa9\tcaf\xc3\xa9\rthree\ttrois")
    assert read_tsv(tmp_path / "p.tsv") == PAIRS


def test_a_latin1_tsv_is_refused_with_line_byte_and_fix(tmp_path, caplog):
    (tmp_path / "p.tsv").write_bytes(tsv_text().encode("latin-1"))
    with pytest.raises(DataError) as error:
        read_tsv(tmp_path / "p.tsv")
    message = str(error.value)
    assert str(tmp_path / "p.tsv") in message and "line 2: not UTF-8 (0xe9: invalid continuation byte at byte 3 of " \
        "the line, byte 10 of the file)" in message
    assert "Latin-1" in message and "re-save it as UTF-8" in message
    with caplog.at_level(logging.WARNING, logger="edh"):
        assert read_tsv(tmp_path / "p.tsv", skip_bad_lines=True) == [PAIRS[0], PAIRS[2]]
    assert "line 2: not UTF-8" in caplog.text and "re-save it as UTF-8" in caplog.text


@pytest.mark.parametrize("data, message", [
    ("one\tun\n".encode("utf-16-le"), r"holds NUL bytes .*UTF-16 or UTF-32 text without a byte-order mark"),
    (b"\xff\xfe" + "one\tun\n".encode("utf-16-le")[:-1], r"starts with a UTF-16 LE .*not valid UTF-16 LE.*Re-save"),
    (b"\xff\xfe" + "o\n\ud800".encode("utf-16-le", "surrogatepass"), r"line 2, byte \d+ of the file"),
])
def test_undecodable_files_are_refused_whole(tmp_path, data, message):
    (tmp_path / "p.tsv").write_bytes(data)
    for skip in (False, True):
        with pytest.raises(TextEncodingError, match=message):
            read_tsv(tmp_path / "p.tsv", skip_bad_lines=skip)


def test_decode_text_names_the_line_and_offset_and_the_encoding():
    decoded = decode_text(b"\xef\xbb\xbfa\r\nb\rc\n", "f.txt")
    assert decoded.text == "a\nb\nc\n" and decoded.encoding == "UTF-8 with a byte-order mark"
    assert decoded.line_endings == "mixed (CRLF, CR, LF)"
    assert decode_text("x\r\ny\r\n".encode("utf-16"), "f").line_endings == "CRLF"
    with pytest.raises(TextEncodingError, match=r"f\.txt is not UTF-8 text: line 3, byte 2 of the line \(byte 9 of "
                                                r"the file\) is 0xff"):
        decode_text(b"ab\r\ncd\nef\xff", "f.txt")


def test_read_lines_and_missing_text_files(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfx\r\ny\r\n")
    assert read_lines(tmp_path / "a.txt") == ["x", "y"]
    for path, message in ((tmp_path / "nope.txt", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(TextFileMissingError, match=message) as error:
            read_lines(path)
        assert isinstance(error.value, EdhError) and isinstance(error.value, FileNotFoundError)
        with pytest.raises(TextFileMissingError, match=message):
            read_tsv(path)


def test_tsv_edge_cases_are_errors_or_counted_warnings(tmp_path, caplog):
    path = tmp_path / "p.tsv"
    path.write_bytes(b"")
    assert read_tsv(path) == []
    with pytest.raises(DataError, match=r"holds no sentence pairs"):
        build_data("tsv", {"path": str(path)}, seed=0)
    path.write_text("a\tb\n\n  \nc\td\n")
    with pytest.raises(DataError, match=r"2 bad lines of 4: line 2: blank; line 3: blank"):
        read_tsv(path)
    path.write_text("a\tb\nc\td\te\ne\tf\n\ufeffg\th\n")
    with caplog.at_level(logging.WARNING, logger="edh"):
        assert read_tsv(path) == [("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")]
    assert "1 line has more than the 2 tab-separated columns of most lines (a tab inside a sentence?)" in caplog.text
    assert "line 2" in caplog.text
    with pytest.raises(SpecError, match="source_column"):
        read_tsv(path, 1, 1)


def test_ding_pairs_are_never_replaced_bytes(tmp_path):
    path = tmp_path / "de-en"
    path.write_bytes("Das Haus ist sehr groß. :: The house is very big.\r\n".encode("latin-1"))
    with pytest.raises(TextEncodingError, match=r"de-en is not UTF-8 text: line 1, byte 21 of the line .*0xdf.*Re-save it as UTF-8"):
        read_ding_pairs(path, min_words=3)
    path.write_bytes("\ufeffDas Haus ist sehr groß. :: The house is very big.\r\n".encode("utf-8"))
    assert read_ding_pairs(path, min_words=3) == [("Das Haus ist sehr groß.", "The house is very big.")]
    path.write_text("# nothing\n")
    with pytest.raises(DataError, match="holds no German-English pairs"):
        build_data("de-en", {"path": str(path)}, seed=0)


def test_tokenizer_files_with_a_bom_load_and_broken_ones_are_edh_errors(tmp_path):
    from edh.data.tokenizer import TextTokenizer, TokenizerFileError, TokenizerFileMissingError

    tokenizer = TextTokenizer.train(["one two", "un deux"], "char")
    (tmp_path / "t.json").write_bytes(b"\xef\xbb\xbf" + tokenizer.to_str().encode())
    assert TextTokenizer.from_file(tmp_path / "t.json").encode("one") == tokenizer.encode("one")
    for content, error_type, message in (
            (b"{not json", TokenizerFileError, "is not a tokenizer file"),
            (b'{"version":"1.0","model":{"type":"BPE","vocab":{},"merges":[]}}', TokenizerFileError,
             r"t\.json: tokenizer has <pad> at id None"),
            (b"\xff\xfe\x00", TextEncodingError, "not valid UTF-16")):
        (tmp_path / "t.json").write_bytes(content)
        with pytest.raises(error_type, match=message):
            TextTokenizer.from_file(tmp_path / "t.json")
    for path in (tmp_path / "missing.json", tmp_path):
        with pytest.raises(TokenizerFileMissingError, match="tokenizer.json") as error:
            TextTokenizer.from_file(path)
        assert isinstance(error.value, EdhError) and isinstance(error.value, FileNotFoundError)
    with pytest.raises(SpecError, match="bpe, char"):
        TextTokenizer.train(["a"], "word")
