"""Every ``edh`` command with broken inputs: missing files, a folder for a file, bad YAML, a bogus spec
key, a run folder without weights or with corrupt ones, an image that is not one, wrong flag values,
broken data files. None may print a Python traceback without ``-v``; each exits with 2 (a user error,
one paragraph); with ``-v`` the traceback is shown.

Commands run in-process through ``edh.cli.main`` (stdout / stderr captured); an exception escaping
``main`` is what the real command line prints as a traceback, so it fails the test the same way. A
few cases also run as real subprocesses. One tiny run is trained once for the module (conv [4, 8]
on 8x8 digits, 3 steps); a tiny translator run folder is built with untrained weights.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

TRACEBACK = "Traceback (most recent call last)"
USER_ERROR = 2  # the exit code of a user error (edh.cli.USER_ERROR_EXIT)

RUN_SPEC = {
    "model": {"encoder": {"name": "conv", "channels": [4, 8]}, "heads": {"label": {"type": "classification"}}},
    "data": {"name": "digits", "image_size": 8, "batch_size": 64, "augment": "none"},
    "train": {"epochs": 1, "lr": 0.01, "seed": 0},
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
}
TRANSLATOR_SPEC = {
    "model": {"encoder": {"name": "transformer", "preset": "tiny"}, "decoder": {"name": "transformer", "preset": "tiny"},
              "heads": {"tokens": {"type": "lm", "source": "decoder"}}},
    "data": {"name": "numbers", "max_number": 60, "batch_size": 16, "vocab_size": 80},
    "train": {"epochs": 1},
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
}
DETECTOR_MODEL = {"encoder": {"name": "test_resnet"},
                  "decoder": {"name": "fpn", "out_channels": 16, "levels": [2, 3, 4], "extra": "none"},
                  "heads": {"objects": {"type": "fcos", "source": "decoder", "target": "boxes", "num_convs": 1}}}


def _write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _untrained_run(spec: dict, path: Path) -> Path:
    """A run folder for ``spec`` with untrained weights (spec, data info, weights, data files)."""
    from edh.core.model import Model
    from edh.core.spec import parse_run_spec
    from edh.data.base import build_data
    from edh.train.resolve import resolve_spec
    from edh.utils.io import atomic_write_text
    from edh.workflows.run import save_weights, write_spec

    path.mkdir(parents=True)
    parsed = parse_run_spec(spec)
    bundle = build_data(parsed.data.name, parsed.data.options(), parsed.data.seed)
    parsed = resolve_spec(parsed, bundle.info)
    write_spec(path, parsed, bundle.info)
    save_weights(path, Model(parsed.model, pretrained=False).bind_data(bundle.info))
    for name, text in bundle.files.items():
        atomic_write_text(path / name, text)
    return path


def _broken_copy(run: Path, path: Path, edit) -> Path:
    shutil.copytree(run, path, ignore=shutil.ignore_patterns(".edh.lock"))
    edit(path)
    return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> dict[str, Path]:
    """Every path a case needs: good runs, broken copies of them, and broken files."""
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    root = tmp_path_factory.mktemp("cli")
    paths: dict[str, Path] = {"root": root}
    run = train_run(parse_run_spec(RUN_SPEC), root / "run", max_steps=3, limit_val_batches=1).path
    paths["run"] = run
    paths["translator"] = _untrained_run(TRANSLATOR_SPEC, root / "translator")
    weights = (run / "model.safetensors").read_bytes()
    broken = {
        "run_no_weights": lambda p: (p / "model.safetensors").unlink(),
        "run_no_ckpt": lambda p: (p / "last.ckpt").unlink(),
        "run_garbage_weights": lambda p: (p / "model.safetensors").write_bytes(b"not safetensors at all" * 10),
        "run_truncated_weights": lambda p: (p / "model.safetensors").write_bytes(weights[: len(weights) // 2]),
        "run_bad_spec_yaml": lambda p: (p / "spec.yaml").write_text("model: [unclosed\n  - : :"),
        "run_bogus_key": lambda p: _write_yaml(p / "spec.yaml", {**yaml.safe_load((p / "spec.yaml").read_text()),
                                                                 "bogus": 1}),
        "run_bad_data_json": lambda p: (p / "data.json").write_text("{not json"),
        "run_data_json_list": lambda p: (p / "data.json").write_text("[1, 2]"),
        "run_garbage_ckpt": lambda p: (p / "last.ckpt").write_bytes(b"\x80\x04garbage"),
    }
    for name, edit in broken.items():
        paths[name] = _broken_copy(run, root / name, edit)
    text_broken = {
        "translator_no_tokenizer": lambda p: (p / "tokenizer.json").unlink(),
        "translator_bad_tokenizer": lambda p: (p / "tokenizer.json").write_text("{not a tokenizer"),
        "translator_latin1_tokenizer": lambda p: (p / "tokenizer.json").write_bytes(b'{"caf\xe9": 1}'),
    }
    for name, edit in text_broken.items():
        paths[name] = _broken_copy(paths["translator"], root / name, edit)
    paths["empty_dir"] = (root / "empty").mkdir() or root / "empty"
    paths["file"] = root / "notes.txt"
    paths["file"].write_text("just a text file\n")
    paths["missing"] = root / "nowhere"
    paths["image"] = root / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(paths["image"])
    paths["not_image"] = root / "fake.png"
    paths["not_image"].write_bytes(b"this is not a picture")
    paths["truncated_image"] = root / "truncated.png"
    paths["truncated_image"].write_bytes(paths["image"].read_bytes()[:40])
    paths["latin1"] = root / "latin1.txt"
    paths["latin1"].write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    paths["spec"] = _write_yaml(root / "spec.yaml", RUN_SPEC)
    paths["bad_yaml"] = root / "bad.yaml"
    paths["bad_yaml"].write_text("model: {encoder: [1, 2\ndata: :\n\t- x")
    paths["bogus_key"] = _write_yaml(root / "bogus.yaml", {**RUN_SPEC, "train": {**RUN_SPEC["train"], "epohcs": 2}})
    paths["model_only"] = _write_yaml(root / "model.yaml", RUN_SPEC["model"])
    paths["yaml_list"] = _write_yaml(root / "list.yaml", [1, 2, 3])
    paths["empty_yaml"] = root / "empty.yaml"
    paths["empty_yaml"].write_text("")
    paths["binary_yaml"] = root / "binary.yaml"
    paths["binary_yaml"].write_bytes(bytes(range(256)))
    # data files edh/data/coco.py and edh/data/text.py read
    coco = root / "coco"
    (coco / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(coco / "images" / "a.png")
    (coco / "no_annotations.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                                          "categories": [{"id": 1, "name": "x"}]}))
    (coco / "nan.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": float("nan"),
                                                           "height": 16}], "annotations": [],
                                               "categories": [{"id": 1, "name": "x"}]}))
    for name in ("no_annotations", "nan"):
        paths[f"coco_{name}"] = _write_yaml(root / f"coco_{name}.yaml", {
            **RUN_SPEC, "model": DETECTOR_MODEL,
            "data": {"name": "coco", "images": str(coco / "images"), "annotations": str(coco / f"{name}.json")}})
    paths["tsv_latin1"] = _write_yaml(root / "tsv_latin1.yaml", {
        **TRANSLATOR_SPEC, "data": {"name": "tsv", "path": str(paths["latin1"])}})
    paths["tsv_missing"] = _write_yaml(root / "tsv_missing.yaml", {
        **TRANSLATOR_SPEC, "data": {"name": "tsv", "path": str(root / "nowhere.tsv")}})
    return paths


def P(name: str, suffix: str = ""):
    """A path of ``ctx`` in an argv template (``suffix`` appended)."""
    return ("path", name, suffix)


# (id, argv template, a regex the message must match or None). `P("x")` is ctx["x"]; `P("root", "/new")` a new path.
CASES = [
    # ---- train
    ("train-missing-spec", ["train", P("missing", ".yaml")], r"does not exist|No such file"),
    ("train-folder-as-spec", ["train", P("empty_dir")], None),
    ("train-bad-yaml", ["train", P("bad_yaml")], r"bad\.yaml"),
    ("train-binary-yaml", ["train", P("binary_yaml")], r"binary\.yaml"),
    ("train-yaml-list", ["train", P("yaml_list")], None),
    ("train-empty-yaml", ["train", P("empty_yaml")], None),
    ("train-bogus-key", ["train", P("bogus_key"), "--out", P("root", "/t1")], r"train\.epohcs"),
    ("train-model-spec", ["train", P("model_only")], r"model spec"),
    ("train-nothing", ["train"], r"run spec"),
    ("train-resume-missing", ["train", "--resume", P("missing")], None),
    ("train-resume-no-ckpt", ["train", "--resume", P("run_no_ckpt")], r"last\.ckpt"),
    ("train-resume-garbage-ckpt", ["train", "--resume", P("run_garbage_ckpt")], r"last\.ckpt"),
    ("train-out-holds-a-run", ["train", P("spec"), "--out", P("run")], r"already holds a run"),
    ("train-epochs-not-int", ["train", P("spec"), "--epochs", "many"], None),
    ("train-epochs-negative", ["train", P("spec"), "--epochs", "-1", "--out", P("root", "/t6")], r"epochs"),
    ("train-coco-no-annotations", ["train", P("coco_no_annotations"), "--out", P("root", "/t2")],
     r"no 'annotations' list"),
    ("train-coco-nan-width", ["train", P("coco_nan"), "--out", P("root", "/t3")], r"has width nan"),
    ("train-tsv-latin1", ["train", P("tsv_latin1"), "--out", P("root", "/t4")], r"not UTF-8.*re-save it as UTF-8"),
    ("train-tsv-missing", ["train", P("tsv_missing"), "--out", P("root", "/t5")], r"nowhere\.tsv does not exist"),
    # ---- eval
    ("eval-missing-run", ["eval", P("missing")], r"does not exist"),
    ("eval-file-as-run", ["eval", P("file")], None),
    ("eval-empty-folder", ["eval", P("empty_dir")], r"missing"),
    ("eval-no-weights", ["eval", P("run_no_weights")], r"model\.safetensors"),
    ("eval-garbage-weights", ["eval", P("run_garbage_weights")], r"model\.safetensors"),
    ("eval-truncated-weights", ["eval", P("run_truncated_weights")], r"model\.safetensors"),
    ("eval-bad-spec-yaml", ["eval", P("run_bad_spec_yaml")], r"spec\.yaml"),
    ("eval-bogus-spec-key", ["eval", P("run_bogus_key")], r"bogus"),
    ("eval-bad-data-json", ["eval", P("run_bad_data_json")], r"data\.json"),
    ("eval-data-json-list", ["eval", P("run_data_json_list")], r"data\.json"),
    ("eval-bad-split", ["eval", P("run"), "--split", "bogus"], None),
    ("eval-out-is-a-file", ["eval", P("run"), "--out", P("file")], None),
    # ---- predict
    ("predict-missing-run", ["predict", P("missing"), P("image")], r"does not exist"),
    ("predict-no-inputs", ["predict", P("run")], r"give one or more inputs"),
    ("predict-not-an-image", ["predict", P("run"), P("not_image")], r"fake\.png"),
    ("predict-truncated-image", ["predict", P("run"), P("truncated_image")], r"truncated\.png"),
    ("predict-missing-image", ["predict", P("run"), P("missing", ".png")], r"nowhere\.png"),
    ("predict-folder-as-image", ["predict", P("run"), P("empty_dir")], None),
    ("predict-top-k-zero", ["predict", P("run"), P("image"), "--top-k", "0"], None),
    ("predict-top-k-negative", ["predict", P("run"), P("image"), "--top-k", "-3"], None),
    ("predict-top-k-not-int", ["predict", P("run"), P("image"), "--top-k", "x"], None),
    ("predict-input-missing", ["predict", P("run"), "--input", P("missing", ".txt")], r"does not exist"),
    ("predict-input-folder", ["predict", P("run"), "--input", P("empty_dir")], None),
    ("predict-input-latin1", ["predict", P("run"), "--input", P("latin1")], r"latin1\.txt"),
    ("predict-bogus-head", ["predict", P("run"), P("image"), "--heads", "bogus"], r"bogus"),
    ("predict-onnx-missing", ["predict", P("run"), P("image"), "--backend", "onnxruntime"], r"onnx"),
    ("predict-sample-not-vae", ["predict", P("run"), "--sample", "2", "--out", P("root", "/samples")], None),
    ("predict-garbage-weights", ["predict", P("run_garbage_weights"), P("image")], r"model\.safetensors"),
    ("predict-out-is-a-file", ["predict", P("run"), P("image"), "--out", P("file")], None),
    ("predict-text-input-latin1", ["predict", P("translator"), "--input", P("latin1")], r"latin1\.txt"),
    ("predict-text-beam-zero", ["predict", P("translator"), "one", "--beam", "0"], r"beam"),
    ("predict-fast-on-text", ["predict", P("translator"), "hello", "--fast"], r"image models"),
    # ---- describe
    ("describe-missing", ["describe", P("missing", ".yaml")], None),
    ("describe-bad-yaml", ["describe", P("bad_yaml")], r"bad\.yaml"),
    ("describe-bogus-key", ["describe", P("bogus_key")], r"epohcs"),
    ("describe-empty-folder", ["describe", P("empty_dir")], None),
    ("describe-bad-input-size", ["describe", P("run"), "--input-size", "big"], r"--input-size"),
    ("describe-zero-input-size", ["describe", P("run"), "--input-size", "0"], r"--input-size"),
    ("describe-bad-data-json", ["describe", P("run_bad_data_json")], r"data\.json"),
    ("describe-image-as-spec", ["describe", P("image")], None),
    ("describe-yaml-list", ["describe", P("yaml_list")], None),
    # ---- list
    ("list-bogus-role", ["list", "bogus"], None),
    # ---- demo
    ("demo-unknown", ["demo", "--only", "bogus"], r"unknown demo bogus"),
    # ---- finetune
    ("finetune-missing-run", ["finetune", P("missing"), "--out", P("root", "/f1")], r"does not exist"),
    ("finetune-out-holds-a-run", ["finetune", P("run"), "--out", P("run")], r"already holds a run"),
    ("finetune-replace-unknown-head", ["finetune", P("run"), "--replace-head", "bogus:classification",
                                       "--out", P("root", "/f2")], r"no head 'bogus'"),
    ("finetune-replace-head-syntax", ["finetune", P("run"), "--replace-head", "label", "--out", P("root", "/f3")],
     None),
    ("finetune-add-existing-head", ["finetune", P("run"), "--add-head", "label:classification",
                                    "--out", P("root", "/f4")], r"exists"),
    ("finetune-add-unknown-type", ["finetune", P("run"), "--add-head", "x:nosuchhead", "--out", P("root", "/f5")],
     r"heads\.x"),
    ("finetune-remove-unknown-head", ["finetune", P("run"), "--remove-head", "nope", "--out", P("root", "/f6")],
     r"nope"),
    ("finetune-bad-lr", ["finetune", P("run"), "--lr", "fast", "--out", P("root", "/f7")], r"fast"),
    ("finetune-bad-role-lr", ["finetune", P("run"), "--lr", "encoder=slow", "--out", P("root", "/f8")], r"slow"),
    ("finetune-negative-epochs", ["finetune", P("run"), "--epochs", "-1", "--out", P("root", "/f9")], r"epochs"),
    ("finetune-spec-missing", ["finetune", P("run"), "--spec", P("missing", ".yaml"), "--out", P("root", "/f10")],
     None),
    ("finetune-spec-model-only", ["finetune", P("run"), "--spec", P("model_only"), "--out", P("root", "/f11")],
     r"model spec"),
    ("finetune-spec-bad-yaml", ["finetune", P("run"), "--spec", P("bad_yaml"), "--out", P("root", "/f12")],
     r"bad\.yaml"),
    ("finetune-garbage-weights", ["finetune", P("run_garbage_weights"), "--out", P("root", "/f13")],
     r"model\.safetensors"),
    # ---- embed
    ("embed-missing-run", ["embed", P("missing"), P("image"), "--out", P("root", "/e1.npy")], r"does not exist"),
    ("embed-not-an-image", ["embed", P("run"), P("not_image"), "--out", P("root", "/e2.npy")], r"fake\.png"),
    ("embed-missing-image", ["embed", P("run"), P("missing", ".png"), "--out", P("root", "/e3.npy")], r"nowhere"),
    ("embed-bogus-role", ["embed", P("run"), P("image"), "--role", "bogus", "--out", P("root", "/e4.npy")], r"bogus"),
    ("embed-bad-level", ["embed", P("run"), P("image"), "--role", "encoder.99", "--out", P("root", "/e5.npy")],
     r"99"),
    ("embed-out-is-a-folder", ["embed", P("run"), P("image"), "--out", P("empty_dir")], None),
    ("embed-out-in-a-file", ["embed", P("run"), P("image"), "--out", P("file", "/e.npy")], None),
    ("embed-garbage-weights", ["embed", P("run_garbage_weights"), P("image"), "--out", P("root", "/e6.npy")],
     r"model\.safetensors"),
    ("embed-text-run", ["embed", P("translator"), P("image"), "--out", P("root", "/e7.npy")], None),
    # ---- diagram
    ("diagram-missing", ["diagram", P("missing"), "--out", P("root", "/d1.svg")], None),
    ("diagram-bad-extension", ["diagram", P("run"), "--out", P("root", "/d2.txt")], r"\.svg|\.png"),
    ("diagram-bad-yaml", ["diagram", P("bad_yaml"), "--out", P("root", "/d3.svg")], r"bad\.yaml"),
    ("diagram-out-is-a-folder", ["diagram", P("run"), "--out", P("empty_dir")], None),
    ("diagram-bad-input-size", ["diagram", P("run"), "--input-size", "x", "--out", P("root", "/d4.svg")],
     r"--input-size"),
    # ---- translate
    ("translate-missing-run", ["translate", P("missing"), "hello"], r"does not exist"),
    ("translate-image-run", ["translate", P("run"), "hello"], None),
    ("translate-nothing", ["translate", P("translator")], r"nothing to translate"),
    ("translate-beam-zero", ["translate", P("translator"), "one", "--beam", "0"], r"--beam"),
    ("translate-batch-size-zero", ["translate", P("translator"), "one", "--batch-size", "0"], r"batch"),
    ("translate-negative-max-new-tokens", ["translate", P("translator"), "one", "--max-new-tokens", "-2"], None),
    ("translate-nan-length-penalty", ["translate", P("translator"), "one", "--beam", "2", "--length-penalty", "nan"],
     None),
    ("translate-input-missing", ["translate", P("translator"), "--input", P("missing", ".txt")], r"does not exist"),
    ("translate-input-folder", ["translate", P("translator"), "--input", P("empty_dir")], None),
    ("translate-input-latin1", ["translate", P("translator"), "--input", P("latin1")], r"latin1\.txt.*UTF-8"),
    ("translate-no-tokenizer", ["translate", P("translator_no_tokenizer"), "one"], r"tokenizer\.json"),
    ("translate-bad-tokenizer", ["translate", P("translator_bad_tokenizer"), "one"], r"tokenizer\.json"),
    ("translate-latin1-tokenizer", ["translate", P("translator_latin1_tokenizer"), "one"], r"tokenizer\.json"),
    ("translate-no-weights", ["translate", P("run_no_weights"), "one"], r"model\.safetensors"),
    ("translate-out-is-a-folder", ["translate", P("translator"), "one", "--out", P("empty_dir")], None),
    # ---- export
    ("export-missing-run", ["export", P("missing")], r"does not exist"),
    ("export-no-weights", ["export", P("run_no_weights")], r"model\.safetensors"),
    ("export-garbage-weights", ["export", P("run_garbage_weights")], r"model\.safetensors"),
    ("export-bogus-head", ["export", P("run"), "--heads", "bogus", "--out", P("root", "/x1.onnx")], r"bogus"),
    ("export-bad-opset", ["export", P("run"), "--opset", "1", "--out", P("root", "/x2.onnx")], None),
    ("export-negative-tolerance", ["export", P("run"), "--tolerance", "-1", "--out", P("root", "/x3.onnx")], None),
    ("export-zero-input-size", ["export", P("run"), "--input-size", "0", "0", "--out", P("root", "/x4.onnx")], None),
    ("export-out-is-a-folder", ["export", P("run"), "--out", P("empty_dir")], None),
    ("export-bad-format", ["export", P("run"), "--format", "tflite"], None),
    # ---- serve: refused before it listens
    ("serve-missing-run", ["serve", P("missing")], r"does not exist"),
    ("serve-garbage-weights", ["serve", P("run_garbage_weights")], r"model\.safetensors"),
    ("serve-bad-port", ["serve", P("run"), "--port", "70000"], r"--port"),
    ("serve-negative-timeout", ["serve", P("run"), "--batch-timeout-ms", "-1"], r"--batch-timeout-ms"),
    ("serve-zero-batch", ["serve", P("run"), "--max-batch-size", "0"], None),
    ("serve-int8-and-fast", ["serve", P("run"), "--int8", "--fast"], r"--int8"),
    # ---- no command / an unknown one
    ("unknown-command", ["bogus"], None),
]
ARGPARSE = {"train-epochs-not-int", "eval-bad-split", "predict-top-k-not-int", "list-bogus-role",
            "export-bad-format", "unknown-command",  # argparse refuses these before edh runs: no -v traceback
            "train-epochs-negative", "predict-top-k-zero", "predict-top-k-negative", "predict-text-beam-zero",
            "finetune-negative-epochs", "translate-beam-zero", "translate-batch-size-zero",
            "translate-negative-max-new-tokens", "translate-nan-length-penalty", "export-zero-input-size",
            "serve-zero-batch"}
WARNS = {"eval-out-is-a-file"}  # not an error: the metrics are printed, a warning says the plots could not be written
COMMANDS_COVERED = {argv[0] for _, argv, _ in CASES}


def _argv(template: list, ctx: dict[str, Path]) -> list[str]:
    return [str(ctx[item[1]]) + item[2] if isinstance(item, tuple) else item for item in template]


def run_cli(cli, capsys, argv: list[str]) -> tuple[int | str, str]:
    """``(exit code, stdout + stderr)``; an exception escaping ``main`` gives ``("raised", its traceback)``:
    the real command line would print that traceback."""
    try:
        code = cli(argv)
    except SystemExit as exit:  # argparse: usage error (2), or --help (0)
        code = exit.code
    except BaseException:  # noqa: B036 - what escapes main() is a traceback on the command line
        captured = capsys.readouterr()
        return "raised", captured.out + captured.err + traceback.format_exc()
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def test_every_command_has_cases():
    from edh.commands import COMMANDS

    assert set(COMMANDS) <= COMMANDS_COVERED


@pytest.mark.parametrize("case, template, message", CASES, ids=[c[0] for c in CASES])
def test_broken_inputs_are_one_clear_error_without_traceback(cli, capsys, ctx, case, template, message):
    import re

    argv = _argv(template, ctx)
    code, output = run_cli(cli, capsys, argv)
    assert code != "raised" and TRACEBACK not in output, \
        f"edh {' '.join(argv)} printed a traceback:\n{_tail(output)}"
    if case in WARNS and code == 0:
        assert "WARNING: " in output, output
        return
    assert code == USER_ERROR, f"edh {' '.join(argv)} exited with {code}:\n{_tail(output)}"
    assert "error" in output, output
    if case not in ARGPARSE:
        command = argv[0]
        assert f"edh {command}: error: " in output, output
        text = output.split(f"edh {command}: error: ", 1)[1].strip()
        assert text, "an empty message"
        if message:
            assert re.search(message, text, re.S), f"{message!r} not in: {text}"


VERBOSE_CASES = [c for c in CASES if c[0] not in ARGPARSE | WARNS]


@pytest.mark.parametrize("case, template, message", VERBOSE_CASES, ids=[c[0] for c in VERBOSE_CASES])
def test_with_v_the_traceback_is_shown(cli, capsys, ctx, case, template, message):
    argv = _argv(template, ctx)
    code, output = run_cli(cli, capsys, ["-v", *argv])
    assert TRACEBACK in output, f"edh -v {' '.join(argv)} showed no traceback:\n{_tail(output)}"
    assert code in (USER_ERROR, "raised"), code


def test_list_and_help_still_work(cli, capsys):
    assert run_cli(cli, capsys, ["list", "--json"])[0] == 0
    code, output = run_cli(cli, capsys, [])
    assert code == 2 and "COMMAND" in output and TRACEBACK not in output


@pytest.mark.slow
@pytest.mark.parametrize("case", ["eval-no-weights", "predict-not-an-image", "train-bad-yaml",
                                  "translate-input-latin1"])
def test_the_real_command_line(ctx, case):
    template = next(t for c, t, _ in CASES if c == case)
    argv = _argv(template, ctx)
    # without and with -v side by side: two processes, most of whose time is spent importing torch
    processes = {verbose: subprocess.Popen([sys.executable, "-m", "edh.cli", *verbose, *argv], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, cwd=ctx["root"])
                 for verbose in ((), ("-v",))}
    try:
        finished = {verbose: (process.communicate(timeout=300)[1], process.returncode)
                    for verbose, process in processes.items()}
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
    for verbose, (stderr, returncode) in finished.items():
        result = subprocess.CompletedProcess([], returncode, "", stderr)
        assert result.returncode == USER_ERROR, result.stderr
        assert (TRACEBACK in result.stderr) == bool(verbose), result.stderr
        assert f"edh {argv[0]}: error: " in result.stderr
