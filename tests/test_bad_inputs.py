"""The bad-input catalogue (docs/reliability.md): each case is a clear error naming what and where, or
a documented, counted skip; nothing is lost silently.

Images: NaN / Inf inputs, empty and one-class datasets, mixed sizes and modes, zero-size, very large
(decompression bomb), corrupt PNG / JPEG. Specs: bad keys and types, a spec from a newer edh.
Text: non-UTF-8 lines, over-long sentences, unknown tokens. (COCO boxes: tests/test_detection_data.py.)
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_run_spec
from edh.data.files import ImageReadError, read_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` 8-bit gray pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + _png_chunk(b"IEND", b""))
    return path


# ---- NaN / Inf ---------------------------------------------------------------------------------------
@pytest.fixture
def poisoned_digits(registry_snapshot):
    """``test-poisoned-digits``, registered for one test: the digits bundle with every 50th training image
    set to ``value``."""
    from edh.data.images import digits

    @registry_snapshot.register_dataset("test-poisoned-digits")
    def poisoned(value: str = "nan", image_size: int | None = None, augment: str = "none", seed: int = 0):
        bundle = digits(image_size=image_size, augment=augment, seed=seed)  # (a NaN option is refused by the spec)
        bundle.train.images = bundle.train.images.clone()
        bundle.train.images[::50] = float(value)
        return bundle


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_or_inf_inputs_stop_training_with_a_clear_error(tmp_path, value, poisoned_digits):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    spec = tiny_run_spec(epochs=1)
    spec["data"] = {"name": "test-poisoned-digits", "value": value, "batch_size": 64}
    with pytest.raises(FloatingPointError, match=r"training loss became nan at epoch 0, step \d+ .*NaN/Inf"):
        train_run(parse_run_spec(spec), tmp_path / "run")


def test_nan_error_is_one_clear_line_on_the_command_line(tmp_path, cli, capsys, monkeypatch):
    import edh.train.runner as runner

    def diverge(*args, **kwargs):
        raise FloatingPointError("training loss became nan at epoch 0, step 3 (terms: {}). Lower train.lr")

    monkeypatch.setattr(runner, "train_run", diverge)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_run_spec()))
    assert cli(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "edh train: error: training loss became nan" in error and "Traceback" not in error


# ---- datasets: empty, one class, mixed images ---------------------------------------------------------
def _folder(root: Path, classes: dict[str, int], size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name / f"{index}.png")
    return root


def test_empty_and_one_class_datasets_are_errors(tmp_path):
    from edh.data.base import DataFilesMissingError, build_data

    with pytest.raises(DataFilesMissingError, match=r"image folder .*nowhere does not exist"):
        build_data("image-folder", {"root": str(tmp_path / "nowhere")})
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "dogs").mkdir(parents=True)
    with pytest.raises(DataFilesMissingError, match=r"empty holds no images"):
        build_data("image-folder", {"root": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match=r"only one class \(cats\); a classifier needs at least two"):
        build_data("image-folder", {"root": str(_folder(tmp_path / "one", {"cats": 3}))})


def test_a_training_split_left_empty_is_an_error(tmp_path):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    spec = tiny_run_spec()
    spec["data"] = {"name": "image-folder", "root": str(_folder(tmp_path / "two", {"a": 1, "b": 1})),
                    "image_size": 8, "in_channels": 3, "val_fraction": 0.5, "test_fraction": 0.49}
    with pytest.raises(ValueError, match="the training split of 'image-folder' is empty"):
        train_run(parse_run_spec(spec), tmp_path / "run")


MODES = {  # PIL mode -> a way to make such an image
    "L": lambda a: Image.fromarray(a[..., 0]),
    "RGB": lambda a: Image.fromarray(a),
    "RGBA": lambda a: Image.fromarray(np.dstack([a, a[..., :1]])),
    "P": lambda a: Image.fromarray(a).convert("P"),
    "I;16": lambda a: Image.fromarray(a[..., 0].astype(np.uint16) * 257),
    "1": lambda a: Image.fromarray(a[..., 0]).convert("1"),
    "LA": lambda a: Image.fromarray(np.dstack([a[..., 0], a[..., 1]]), "LA"),
    "CMYK": lambda a: Image.fromarray(a).convert("CMYK"),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_every_image_mode_reads_as_the_runs_channels(tmp_path, mode, in_channels):
    array = np.random.default_rng(1).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    image = MODES[mode](array)
    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    image.save(path)
    tensor = read_image(path, in_channels)
    assert tensor.shape == (in_channels, 9, 7) and tensor.dtype == torch.float32
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    if mode in ("L", "I;16") and in_channels == 1:  # 16-bit keeps its range: 257 k / 65535 == k / 255
        torch.testing.assert_close(tensor[0], torch.from_numpy(array[..., 0]).float() / 255)


def test_a_folder_of_mixed_sizes_and_modes_gives_one_batch_shape(tmp_path):
    from torch.utils.data import DataLoader

    from edh.data.base import build_data

    rng = np.random.default_rng(2)
    for index, (mode, size) in enumerate(zip(MODES, [(5, 9), (40, 30), (12, 12), (64, 8), (7, 7), (20, 33), (9, 9),
                                                     (16, 16)])):
        folder = tmp_path / "mixed" / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        image = MODES[mode](rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        image.save(folder / (f"{index}.tif" if mode == "CMYK" else f"{index}.png"))
    bundle = build_data("image-folder", {"root": str(tmp_path / "mixed"), "image_size": 16, "val_fraction": 0.0,
                                         "test_fraction": 0.0, "augment": "none"})
    images, targets = next(iter(DataLoader(bundle.train, batch_size=8)))
    assert images.shape == (8, 3, 16, 16) and torch.isfinite(images).all() and targets["label"].shape == (8,)


# ---- broken image files ------------------------------------------------------------------------------
def _jpeg(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("case, message", [
    ("zero_size", r"cannot read image .*zero_size\.png"),
    ("truncated_jpeg", r"cannot read image .*truncated_jpeg\.jpg"),
    ("truncated_png", r"cannot read image .*truncated_png\.png: image file is truncated"),
    ("corrupt_png", r"cannot read image .*corrupt_png\.png"),
    ("not_an_image", r"cannot read image .*not_an_image\.png: cannot identify image file"),
    ("bomb", r"refusing to read image .*bomb\.png: .*decompression bomb"),
    ("missing", r"image .*missing\.png does not exist"),
])
def test_broken_image_files_are_errors_that_name_the_file(tmp_path, case, message):
    path = tmp_path / f"{case}.{'jpg' if 'jpeg' in case else 'png'}"
    if case == "zero_size":
        _png_header_only(path, 0, 10)
    elif case == "truncated_jpeg":
        data = _jpeg(path).read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif case in ("truncated_png", "corrupt_png"):
        Image.fromarray(np.random.default_rng(4).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        data = bytearray(path.read_bytes())
        if case == "truncated_png":
            data = data[:len(data) // 2]
        else:
            data[60:70] = b"\0" * 10
        path.write_bytes(bytes(data))
    elif case == "not_an_image":
        path.write_bytes(b"this is not a picture at all")
    elif case == "bomb":
        _png_header_only(path, 30_000, 30_000)  # 900 M pixels: over twice PIL's limit
    with pytest.raises(ImageReadError, match=message):
        read_image(path, 3)


def test_a_broken_file_inside_a_dataset_is_named_not_skipped(tmp_path):
    from edh.data.base import build_data

    root = _folder(tmp_path / "data", {"a": 3, "b": 3})
    (root / "b" / "1.png").write_bytes(b"broken")
    bundle = build_data("image-folder", {"root": str(root), "image_size": 8, "val_fraction": 0.0,
                                         "test_fraction": 0.0})
    with pytest.raises(ImageReadError, match=r"b/1\.png"):
        [bundle.train[i] for i in range(len(bundle.train))]


# ---- specs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (lambda s: s["train"].update(epohcs=3), r"train\.epohcs: unknown key"),
    (lambda s: s["data"].update(batch_size="big"), r"data\.batch_size: .*integer.*'big'"),
    (lambda s: s["train"].update(epochs=-1), r"train\.epochs: -1 is out of range; allowed: 1 to 1000000"),
    (lambda s: s["model"]["encoder"].update(name="convv"), r"convv.*conv"),
    (lambda s: s["model"]["encoder"].update(chanels=[8]), r"chanels"),
    (lambda s: s.update(edh_version="99.0.0"), r"written by edh 99\.0\.0, newer than the installed edh"),
])
def test_bad_specs_are_errors_that_name_the_key(tmp_path, cli, capsys, edit, message):
    import re

    spec = tiny_run_spec()
    edit(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error, re.S) and "Traceback" not in error, error


def test_a_run_folder_from_a_newer_edh_is_refused(tmp_path, cli, capsys):
    from test_export import make_run

    spec = tiny_run_spec()
    run = make_run({"model": spec["model"], "data": spec["data"]}, tmp_path / "run")
    saved = yaml.safe_load((run.path / "spec.yaml").read_text())
    saved["edh_version"] = "99.1.0"
    (run.path / "spec.yaml").write_text(yaml.safe_dump(saved))
    for command in (["eval", str(run.path)], ["export", str(run.path)], ["predict", str(run.path), "x.png"]):
        assert cli(command) == 2
        error = capsys.readouterr().err
        assert "spec.yaml" in error and "written by edh 99.1.0" in error and "upgrade edh" in error


# ---- text --------------------------------------------------------------------------------------------
def test_non_utf8_lines_are_errors_with_line_numbers_or_counted_skips(tmp_path, caplog):
    from edh.data.text import read_tsv

    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"one\tun\n" + b"caf\xe9\tcaf\xe9\n" + b"two\tdeux\n" + b"no tab here\n" + b"three\t\n")
    with pytest.raises(ValueError, match=r"3 bad lines of 5: line 2: not UTF-8 .*; line 4: 1 column, need 2 .*"
                                         r"; line 5: empty target"):
        read_tsv(path)
    with caplog.at_level(logging.WARNING, logger="edh"):
        pairs = read_tsv(path, skip_bad_lines=True)
    assert pairs == [("one", "un"), ("two", "deux")] and "3 bad lines of 5" in caplog.text and "Left out" in caplog.text


def test_over_long_sentences_are_truncated_and_counted(caplog):
    from edh.data.text import ParallelText
    from edh.data.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.train(["one two three four", "un deux trois quatre"], "bpe", 60)
    pairs = [("one " * 40, "un"), ("two", "deux"), ("three", "trois " * 50)]
    with caplog.at_level(logging.WARNING, logger="edh"):
        text = ParallelText(pairs, tokenizer, max_tokens=16, name="unit")
    assert "2 of 3 pairs are longer than max_tokens=16 and were truncated" in caplog.text
    assert max(len(s) for s in text.sources) <= 15 and max(len(t) for t in text.targets) <= 16


def test_unknown_tokens_map_to_unk():
    from edh.data.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.train(["one two three", "un deux trois"], "bpe", 60)
    ids = tokenizer.encode("one ☃ zebra")
    assert tokenizer.unk_id in ids and all(0 <= i < tokenizer.vocab_size for i in ids)
