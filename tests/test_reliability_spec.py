"""Nothing lost, nothing silent: specs, YAML files and weight files that edh must refuse, each with a
message that names the key path (or file, or tensor), the value and the fix.

- numbers out of range in a spec or a component option: `SpecError` with the key path, the value and
  the allowed range (`edh.core.spec.SPEC_RANGES`, `edh.core.builder.OPTION_RANGES`);
- a head with fewer classes than the data: refused by ``bind_data`` before the first step;
- YAML bombs, recursive aliases, deep nesting, duplicate keys, huge / non-regular / non-UTF-8 files;
- weights that are text, a directory, a FIFO, hold NaN / Inf, have an edited header, or come from a
  newer edh;
- property tests: the spec parsers end in a spec or an `EdhError`, never another exception.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field

import edh
from edh.core.builder import OPTION_RANGES, Range, validate_options
from edh.core.errors import EdhError, SpecError
from edh.core.spec import ModelSpec, RunSpec, from_yaml, load_spec, override, parse_model_spec, parse_run_spec
from edh.core.spec_yaml import MAX_SPEC_BYTES, load_yaml_text, read_yaml
from edh.data.base import DataInfo
from edh.utils.io import WeightsFileError, load_tensors, save_tensors

CONFIGS = Path(edh.__file__).parent / "configs"


def run_spec(train=None, data=None, head=None, encoder=None) -> dict:
    return {
        "model": {"encoder": {"name": "conv", "channels": [4, 8], **(encoder or {})},
                  "heads": {"label": {"type": "classification", "num_classes": 10, **(head or {})}}},
        "data": {"name": "digits", "image_size": 8, **(data or {})},
        "train": {"epochs": 1, **(train or {})},
    }


# ---- numbers out of range -----------------------------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    ({"train": {"lr": -1}}, r"train\.lr: -1 is out of range; allowed: more than 0 and at most 10"),
    ({"train": {"lr": {"encoder": 1e-4, "heads": 0}}}, r"train\.lr: heads: 0 is out of range"),
    ({"train": {"lr": float("nan")}}, r"train\.lr: nan is out of range"),
    ({"train": {"epochs": 0}}, r"train\.epochs: 0 is out of range; allowed: 1 to 1000000"),
    ({"train": {"epochs": True}}, r"train\.epochs: True is a boolean, not a number; allowed: 1 to"),
    ({"train": {"seed": 1e30}}, r"train\.seed: 1e\+30 is out of range; allowed: 0 to 4294967295"),
    ({"train": {"momentum": 1.5}}, r"train\.momentum: 1\.5 is out of range; allowed: at least 0 and less than 1"),
    ({"train": {"weight_decay": -0.1}}, r"train\.weight_decay: -0\.1 is out of range"),
    ({"train": {"grad_clip": 0}}, r"train\.grad_clip: 0(\.0)? is out of range; allowed: more than 0"),
    ({"train": {"warmup_epochs": 5, "epochs": 2}}, r"warmup_epochs \(5\) is longer than epochs \(2\)"),
    ({"data": {"batch_size": -4}}, r"data\.batch_size: -4 is out of range; allowed: 1 to 65536"),
    ({"data": {"num_workers": -1}}, r"data\.num_workers: -1 is out of range; allowed: 0 to 256"),
    ({"data": {"seed": -1}}, r"data\.seed: -1 is out of range; allowed: 0 to 4294967295"),
    ({"data": {"image_size": -4}}, r"data\.image_size: -4 is out of range; allowed: 1 to 8192"),
    ({"data": {"image_size": 100000}}, r"data\.image_size: 100000 is out of range; allowed: 1 to 8192"),
    ({"data": {"val_fraction": 1.5}}, r"data\.val_fraction: 1\.5 is out of range; allowed: at least 0 and less than 1"),
    ({"head": {"num_classes": 1e12}}, r"model\.heads\.label\.num_classes: 1000000000000(\.0)? is out of range; "
                                      r"allowed: 1 to 100000"),
    ({"head": {"weight": -1}}, r"model\.heads\.label\.weight: -1(\.0)? is out of range; allowed: 0 to 1000000"),
    ({"head": {"dropout": 1.0}}, r"model\.heads\.label\.dropout: 1\.0 is out of range"),
    ({"head": {"label_smoothing": -0.5}}, r"model\.heads\.label\.label_smoothing: -0\.5 is out of range"),
    ({"encoder": {"channels": [4, -8]}}, r"model\.encoder\.channels\[1\]: -8 is out of range; allowed: 1 to 65536"),
])
def test_numbers_out_of_range_name_the_key_the_value_and_the_range(edit, message):
    spec = run_spec()
    for section, values in edit.items():
        target = {"head": spec["model"]["heads"]["label"], "encoder": spec["model"]["encoder"]}.get(section) \
            or spec[section]
        target.update(values)
    with pytest.raises(SpecError, match=message):
        parse_run_spec(spec)


def test_yaml_numbers_are_checked_in_the_file_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {encoder: {name: conv}, heads: {label: {type: classification, num_classes: 10}}}\n"
                    "data: {name: digits, batch_size: 0}\ntrain: {lr: -1, weight_decay: .nan}\n")
    with pytest.raises(SpecError) as error:
        load_spec(path)
    message = str(error.value)
    assert str(path) in message and "data.batch_size: 0 is out of range" in message
    assert "train.lr: -1 is out of range" in message and "train.weight_decay: nan is out of range" in message


def test_component_ranges_are_checked_when_built_too():
    """The Python API (no spec file) gets the same check from the builder: no MemoryError for 1e12 classes."""
    started = time.perf_counter()
    with pytest.raises(SpecError, match=r"heads\.label\.num_classes: 1000000000000 is out of range; allowed: 1 to"):
        edh.build(encoder={"name": "conv", "channels": [4]},
                  heads={"label": {"type": "classification", "num_classes": 10**12}})
    assert time.perf_counter() - started < 10
    with pytest.raises(SpecError, match=r"heads\.label\.top_k: True is a boolean, not a number"):
        validate_options(edh.core.registry.lookup("head", "classification"), {"num_classes": 3, "top_k": True},
                         "heads.label", "head 'classification'")


def test_a_builders_own_annotated_range_overrides_the_table():
    def builder(depth: Annotated[int, Field(ge=2, le=5)] = 3, dropout: float = 0.0):
        return None

    with pytest.raises(SpecError, match=r"heads\.x\.depth: 9 is out of range; allowed: 2 to 5"):
        validate_options(builder, {"depth": 9}, "heads.x", "head 'x'")
    with pytest.raises(SpecError, match=r"heads\.x\.dropout: 2\.0 is out of range; allowed: at least 0 and less"):
        validate_options(builder, {"dropout": 2.0}, "heads.x", "head 'x'")
    assert validate_options(builder, {"depth": 5}, "heads.x", "head 'x'") == {"depth": 5}
    assert str(Range(ge=1, le=8)) == "1 to 8" and str(Range(gt=0)) == "more than 0"
    assert OPTION_RANGES["image_size"] == Range(ge=1, le=8192)


def test_every_shipped_config_is_within_the_ranges():
    for path in sorted(CONFIGS.glob("*.yaml")):
        load_spec(path)


def test_assigning_or_overriding_train_fields_is_validated():
    """``edh train --epochs 0`` must be refused, not ignored: assignment and `override` validate."""
    spec = parse_run_spec(run_spec())
    with pytest.raises(SpecError, match=r"train\.epochs: 0 is out of range; allowed: 1 to"):
        spec.train.epochs = 0
    with pytest.raises(SpecError, match=r"train\.lr: -1 is out of range"):
        spec.train.lr = -1
    with pytest.raises(SpecError, match=r"in the command line:\n  train\.epochs: 0 is out of range"):
        override(spec, {"train.epochs": 0})
    assert override(spec, {"train.epochs": 3, "train.lr": None}).train.epochs == 3
    spec.train.epochs = 4
    assert spec.train.epochs == 4


# ---- the head's classes against the data's -------------------------------------------------------------
def _resolved_model(spec: dict):
    from edh.data.base import build_data
    from edh.train.resolve import resolve_spec

    parsed = parse_run_spec(spec)
    info = build_data(parsed.data.name, parsed.data.options(), parsed.data.seed).info
    return edh.Model(resolve_spec(parsed, info).model, pretrained=False), info


def test_a_head_with_fewer_classes_than_the_data_is_refused_before_the_first_step(tmp_path):
    from edh.train.runner import train_run

    spec = parse_run_spec(run_spec(head={"num_classes": 5}))
    with pytest.raises(SpecError, match=r"model\.heads\.label\.num_classes is 5, but the data 'digits' has 10 classes "
                                        r"in its 'label' target \(labels 0\.\.9\).*Set num_classes: 10"):
        train_run(spec, tmp_path / "run")
    assert not (tmp_path / "run" / "last.ckpt").exists()
    renamed = run_spec(head={"num_classes": 5, "target": "label"})
    renamed["model"]["heads"] = {"digit": renamed["model"]["heads"]["label"]}
    model, info = _resolved_model(renamed)
    with pytest.raises(SpecError, match=r"model\.heads\.digit\.num_classes is 5"):
        model.bind_data(info)


def test_a_head_with_more_classes_than_the_data_is_a_warning(caplog):
    model, info = _resolved_model(run_spec(head={"num_classes": 12}))
    with caplog.at_level("WARNING", logger="edh"):
        model.bind_data(info)
    assert "num_classes is 12, but the data 'digits' has only 10 classes" in caplog.text


def test_segmentation_mask_classes_and_ignore_index_are_checked():
    info = DataInfo(targets={"mask": "segmentation"},
                    extra={"dataset": "image-masks", "mask_class_names": ["0", "1", "2", "3"],
                           "head_defaults": {"mask": {"num_classes": 4, "ignore_index": 255}}})
    small = edh.build(encoder="test_resnet", heads={"mask": {"type": "segmentation", "num_classes": 3,
                                                             "ignore_index": 255}})
    with pytest.raises(SpecError, match=r"model\.heads\.mask\.num_classes is 3, but the data 'image-masks' has 4 mask "
                                        r"classes .*labels 0\.\.3"):
        small.bind_data(info)
    unignored = edh.build(encoder="test_resnet", heads={"mask": {"type": "segmentation", "num_classes": 4}})
    with pytest.raises(SpecError, match=r"leave out with 255 \(data\.ignore_index\), but "
                                        r"model\.heads\.mask\.ignore_index is None"):
        unignored.bind_data(info)
    edh.build(encoder="test_resnet", heads={"mask": {"type": "segmentation", "num_classes": 4,
                                                     "ignore_index": 255}}).bind_data(info)


def test_detection_and_regression_heads_check_the_data():
    info = DataInfo(class_names=["a", "b", "c", "d"], targets={"boxes": "detection", "labels": "detection",
                                                               "count": "regression"},
                    extra={"dataset": "coco", "head_defaults": {"boxes": {"num_classes": 4},
                                                                "count": {"num_outputs": 1}}})
    model = edh.build(encoder="test_resnet", heads={
        "detections": {"type": "fcos", "num_classes": 2, "num_convs": 1, "target": "boxes"}})
    with pytest.raises(SpecError, match=r"model\.heads\.detections\.num_classes is 2, but the data 'coco' has 4 object "
                                        r"classes in its 'boxes' target \(labels 1\.\.4\)"):
        model.bind_data(info)
    counter = edh.build(encoder="test_resnet", heads={"count": {"type": "regression", "num_outputs": 3, "hidden": 4}})
    with pytest.raises(SpecError, match=r"model\.heads\.count\.num_outputs is 3, but the data 'coco' gives 1 values"):
        counter.bind_data(info)


# ---- YAML ---------------------------------------------------------------------------------------------
def _bomb(levels: int = 9) -> str:
    text = "model: {encoder: {name: conv}}\ndata: {name: digits}\nl0: &l0 [" + ", ".join(['"lol"'] * 9) + "]\n"
    for level in range(1, levels):
        text += f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]\n"
    return text + f"trainer: {{x: *l{levels - 1}}}\n"


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path, cli, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert path.stat().st_size < 1024
    started = time.perf_counter()
    with pytest.raises(SpecError, match=r"refusing to read .*bomb\.yaml: its aliases .* expand to more than"):
        load_spec(path)
    from edh import cli as cli_module

    for command in (["describe", str(path)], ["train", str(path), "--out", str(tmp_path / "run")]):
        assert cli(command) == getattr(cli_module, "USER_ERROR_EXIT", 1)
        error = capsys.readouterr().err
        assert "bomb.yaml" in error and "billion laughs" in error and "Traceback" not in error
    assert time.perf_counter() - started < 20
    with pytest.raises(SpecError, match="expand to more than"):
        from_yaml(_bomb(), RunSpec)


@pytest.mark.parametrize("text, message", [
    ("a: &a [1, *a]\n", r"recursive alias"),
    ("a: " + "[" * 150 + "]" * 150 + "\n", r"more than 100 levels deep"),
    ("encoder: {name: conv}\nencoder: {name: resnet18}\n", r"key 'encoder' is given twice .*lines 1 and 2"),
    ("a: !!python/object/apply:os.system [echo]\n", r"is not valid YAML: could not determine a constructor"),
    ("a: [1, 2\n", r"is not valid YAML"),
    ("a: \x00\n", r"is not valid YAML"),
])
def test_yaml_that_cannot_be_a_spec_is_refused(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as error:
        read_yaml(path)
    assert str(path) in str(error.value)


def test_merge_keys_and_small_aliases_still_work():
    data = load_yaml_text("base: &base {type: classification, num_classes: 3}\n"
                          "heads: {a: *base, b: {<<: *base, num_classes: 4}}\n")
    assert data["heads"]["a"]["num_classes"] == 3 and data["heads"]["b"]["num_classes"] == 4


def test_spec_files_that_are_not_small_regular_utf8_files_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * MAX_SPEC_BYTES)
    with pytest.raises(SpecError, match=r"big\.yaml is 1,048,579 bytes, more than a spec may be \(1,048,576\)"):
        read_yaml(big)
    with pytest.raises(SpecError, match=r"is a directory"):
        read_yaml(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError, match=r"latin\.yaml is not UTF-8 text \(byte 0xe9 at offset 9\)"):
        read_yaml(latin)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match=r"fifo\.yaml is not a regular file"):
        _without_blocking(lambda: read_yaml(fifo), fifo)


# ---- weights ------------------------------------------------------------------------------------------
def _without_blocking(call, fifo: Path, seconds: float = 20.0):
    """``call()`` in a thread; a call still running after ``seconds`` (blocked opening ``fifo``) fails the
    test, after a writer is opened so that the thread can end."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"reading {fifo} blocked: the FIFO was opened")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _write(path: Path, kind: str) -> Path:
    if kind == "text":
        path.write_text("conv1.weight: [1, 2, 3]\n")
    elif kind == "lfs":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 42\n")
    elif kind == "html":
        path.write_text("<!DOCTYPE html><html><body>Not Found</body></html>\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
        save_tensors(path / "model.safetensors", {"a": torch.ones(1)})
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "torch-as-safetensors":
        torch.save({"a": torch.ones(2)}, path)
    elif kind == "garbage":
        path.write_bytes(bytes(range(200, 256)) * 4)
    return path


@pytest.mark.parametrize("kind, suffix, message", [
    ("text", ".pth", r"w\.pth is a text file, not a weights file: it starts with 'conv1\.weight: \[1, 2, 3\]'"),
    ("text", ".safetensors", r"is a text file, not a weights file"),
    ("lfs", ".safetensors", r"is a text file, not a weights file: it is a Git LFS pointer"),
    ("html", ".pth", r"is a text file, not a weights file: it starts with '<!DOCTYPE html>.*error page"),
    ("empty", ".pth", r"w\.pth is empty \(0 bytes\)"),
    ("directory", ".safetensors", r"w\.safetensors is a directory, not a weights file; it holds model\.safetensors"),
    ("fifo", ".safetensors", r"w\.safetensors is a named pipe \(FIFO\), not a regular file"),
    ("torch-as-safetensors", ".safetensors", r"is not a valid safetensors file: it is a PyTorch file \(torch\.save\); "
                                             r"rename it to w\.pth"),
    ("garbage", ".bin", r"w\.bin is neither a PyTorch file \(torch\.save\) nor safetensors"),
])
def test_weights_paths_that_are_not_weights_each_say_what_they_are(tmp_path, kind, suffix, message):
    path = _write(tmp_path / f"w{suffix}", kind)
    with pytest.raises(WeightsFileError, match=message) as error:
        _without_blocking(lambda: load_tensors(path), path)
    assert "does not exist" not in str(error.value) and "could run code" not in str(error.value)
    with pytest.raises(WeightsFileError, match=message):  # the encoder's ``weights:`` option: the same message
        _without_blocking(lambda: edh.build(encoder={"name": "conv", "channels": [4], "weights": str(path)},
                                            heads={"label": {"type": "classification", "num_classes": 2}}), path)


def test_missing_and_empty_weights_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights file .*nothing\.pth does not exist"):
        load_tensors(tmp_path / "nothing.pth")
    (tmp_path / "link.pth").symlink_to(tmp_path / "gone.pth")
    with pytest.raises(FileNotFoundError, match=r"link\.pth is a symbolic link to .*gone\.pth, which does not exist"):
        load_tensors(tmp_path / "link.pth")
    with pytest.raises(SpecError, match=r"encoder\.weights: an empty path"):
        edh.build(encoder={"name": "conv", "weights": ""},
                  heads={"label": {"type": "classification", "num_classes": 2}})


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_holding_nan_or_inf_are_refused_naming_the_tensors(tmp_path, suffix):
    state = {"a": torch.tensor([1.0, float("nan"), float("nan")]), "b": torch.tensor([float("-inf")]),
             "ok": torch.ones(3), "steps": torch.tensor(3)}
    path = tmp_path / f"diverged{suffix}"
    save_tensors(path, state) if suffix == ".safetensors" else torch.save(state, path)
    with pytest.raises(WeightsFileError, match=r"diverged\..* holds non-finite values \(NaN or Inf\) in 2 tensor\(s\): "
                                               r"a \(2 NaN of 3 values\), b \(1 Inf of 1 values\)"):
        load_tensors(path)


def _edit_header(path: Path, old: bytes, new: bytes) -> None:
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + length].replace(old, new, 1)
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + length:])


@pytest.mark.parametrize("dtype, size", [(b'"F16"', 24), (b'"F64"', 96)])
def test_a_safetensors_header_whose_dtype_was_changed_is_refused(tmp_path, dtype, size):
    path = tmp_path / "edited.safetensors"
    save_tensors(path, {"weight": torch.ones(3, 4)})
    _edit_header(path, b'"F32"', dtype)
    expected = (rf"edited\.safetensors is not a valid safetensors file .*tensor weight is {dtype.decode()[1:-1]} of "
                rf"shape \(3, 4\) \({size} bytes\) but its data takes bytes 0\.\.48 \(48 bytes\): its dtype or shape "
                r"in the header was changed")
    with pytest.raises(WeightsFileError, match=expected):
        load_tensors(path)


def test_weights_from_a_newer_edh_load_with_a_warning(tmp_path, caplog):
    path = tmp_path / "future.safetensors"
    save_tensors(path, {"a": torch.ones(2)}, metadata={"edh_version": "99.1.0"})
    with caplog.at_level("WARNING", logger="edh"):
        assert torch.equal(load_tensors(path)["a"], torch.ones(2))
    assert "future.safetensors was written by edh 99.1.0, newer than the installed edh" in caplog.text
    caplog.clear()
    save_tensors(path, {"a": torch.ones(2)}, metadata={"edh_version": edh.__version__})
    with caplog.at_level("WARNING", logger="edh"):
        load_tensors(path)
    assert "newer" not in caplog.text


# ---- property tests: the parsers end in a spec or an EdhError ------------------------------------------
_KEYS = ["model", "data", "train", "trainer", "encoder", "decoder", "heads", "name", "type", "source", "weight",
         "target", "num_classes", "epochs", "lr", "seed", "batch_size", "image_size", "channels", "dropout",
         "val_fraction", "edh_version", "label", "conv", "digits", "classification", "freeze", "x"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**40, 10**40),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.sampled_from(_KEYS))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=6), st.integers(-3, 3)), inner, max_size=5)),
    max_leaves=25)
_specs = st.dictionaries(st.sampled_from(_KEYS), _values, max_size=6)


def _ends_cleanly(call) -> None:
    try:
        result = call()
    except EdhError as error:
        assert str(error).strip(), "an EdhError without a message"
        return
    assert isinstance(result, (ModelSpec, RunSpec, dict, list, str, int, float, bool, type(None)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_specs)
def test_random_mappings_parse_or_raise_an_edh_error(data):
    _ends_cleanly(lambda: parse_run_spec(data))
    _ends_cleanly(lambda: parse_model_spec(data))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoder=_values, heads=_values, train=_values, data=_values)
def test_random_run_specs_parse_or_raise_an_edh_error(encoder, heads, train, data):
    spec = {"model": {"encoder": {"name": "conv", "x": encoder} if not isinstance(encoder, dict) else encoder,
                      "heads": heads}, "data": data, "train": train}
    _ends_cleanly(lambda: parse_run_spec(spec))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(_specs, _values))
def test_random_spec_files_load_or_raise_an_edh_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(yaml.safe_dump(data))
        _ends_cleanly(lambda: load_spec(path))


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(st.text(max_size=60), st.text(alphabet="{}[]:,&*!|>-? \n'\"ab1.#", max_size=60)))
def test_random_yaml_text_loads_or_raises_an_edh_error(text):
    _ends_cleanly(lambda: load_yaml_text(text, "random.yaml"))
