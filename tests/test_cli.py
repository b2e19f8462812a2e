"""The edh command line end to end: train a tiny model, evaluate, predict, describe, list, and
resume a run killed in the middle of training.

Commands run in this process through ``edh.cli.main`` (``edh_in_process``: exit code, stdout, stderr),
which spares each one a fresh interpreter importing torch; what needs a real process (a run killed
with SIGKILL, which modules a command imports) still runs one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import edh_in_process as run, tiny_run_spec

EDH = [sys.executable, "-m", "edh.cli"]


def edh(*args, check=True, cwd=None):
    """``edh ARGS`` as a real subprocess (for a test about the process itself; tests/test_report.py)."""
    result = subprocess.run([*EDH, *map(str, args)], check=False, capture_output=True, text=True, cwd=cwd,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"edh {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _spec_file(tmp_path, **train):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_run_spec(**train)))
    return path


def _digit_png(tmp_path) -> Path:
    from sklearn.datasets import load_digits

    image = (load_digits().images[0] / 16 * 255).astype(np.uint8)
    path = tmp_path / "zero.png"
    Image.fromarray(image).save(path)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cli")
    spec = _spec_file(tmp_path, epochs=3)
    run_dir = tmp_path / "run"
    run("train", spec, "--out", run_dir)
    return tmp_path, run_dir


def test_train_writes_a_complete_run_folder(trained_run):
    _, run_dir = trained_run
    for name in ("model.safetensors", "spec.yaml", "data.json", "metrics.csv", "curves.png", "last.ckpt"):
        assert (run_dir / name).is_file(), name
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and "val/label/acc" in rows[0]
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert spec["model"]["heads"]["label"]["num_classes"] == 10  # resolved from the data
    assert spec["model"]["encoder"]["in_channels"] == 1


def test_train_refuses_to_overwrite(trained_run):
    tmp_path, run_dir = trained_run
    result = run("train", tmp_path / "tiny.yaml", "--out", run_dir, check=False)
    assert result.returncode == 2 and "already holds a run" in result.stderr and "--resume" in result.stderr


def test_eval_prints_metrics_and_writes_confusion_matrix(trained_run):
    _, run_dir = trained_run
    out = run("eval", run_dir, "--json").stdout
    metrics = json.loads(out)["metrics"]["label"]
    assert metrics["acc"] > 0.5 and "top5" in metrics
    text = run("eval", run_dir).stdout
    assert "precision" in text and "recall" in text
    assert (run_dir / "confusion_matrix.png").is_file()


def test_predict_prints_top_k(trained_run):
    tmp_path, run_dir = trained_run
    png = _digit_png(tmp_path)
    out = run("predict", run_dir, png, "--top-k", "3").stdout
    line = out.strip().splitlines()[0]
    assert line.startswith(str(png)) and "label:" in line and len(line.split("label:")[1].split(",")) == 3


def test_eval_and_predict_speed_flags_give_the_same_answers(trained_run):
    tmp_path, run_dir = trained_run
    plain = json.loads(run("eval", run_dir, "--json").stdout)["metrics"]["label"]
    fast = json.loads(run("eval", run_dir, "--json", "--fast").stdout)["metrics"]["label"]
    assert fast["acc"] == pytest.approx(plain["acc"], abs=0.01)
    png = _digit_png(tmp_path)
    top = run("predict", run_dir, png, "--top-k", "1").stdout.split("label:")[1].split()[0]
    assert run("predict", run_dir, png, "--top-k", "1", "--bf16").stdout.split("label:")[1].split()[0] == top


def test_predict_unreadable_image_names_the_file(trained_run):
    tmp_path, run_dir = trained_run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    result = run("predict", run_dir, bad, check=False)
    assert result.returncode == 2 and "bad.png" in result.stderr and "Traceback" not in result.stderr


def test_describe_run_and_spec(trained_run, tmp_path):
    _, run_dir = trained_run
    data = json.loads(run("describe", run_dir, "--json").stdout)
    assert [r["role"] for r in data["rows"]] == ["Encoder", "Head:label"] and data["input_size"] == [8, 8]
    spec = tmp_path / "model.yaml"
    spec.write_text("encoder: {name: resnet18}\nheads: {label: {type: classification, num_classes: 10}}\n")
    text = run("describe", spec, "--input-size", "64").stdout
    assert "Encoder" in text and "Head:label" in text and "11.18M" in text


def test_list_shows_what_fits(tmp_path):
    data = json.loads(run("list", "--json").stdout)
    assert {"resnet50", "conv", "timm:<model>"} <= {r["name"] for r in data["encoders"]}
    head = next(r for r in data["heads"] if r["name"] == "classification")
    assert "resnet18" in head["fits"] and "num_classes" in head["options"]


def test_run_folder_with_missing_files(tmp_path):
    (tmp_path / "spec.yaml").write_text("x: 1")
    result = run("eval", tmp_path, check=False)
    assert result.returncode == 2 and "missing data.json, model.safetensors" in result.stderr


def test_light_commands_do_not_import_lightning(trained_run):
    _, run_dir = trained_run
    commands = [["--help"], ["list"], ["describe", str(run_dir)], ["predict", str(run_dir), "--help"]]
    # one fresh process runs them in turn and reports after each: the first one to load Lightning is named
    code = (f"import sys\nfrom edh.cli import main\nfor args in {commands!r}:\n    try:\n        main(args)\n"
            "    except SystemExit:\n        pass\n"
            "    print('STATUS', 'LIGHTNING' if 'lightning' in sys.modules else 'CLEAN')\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=120).stdout
    status = [line.split()[1] for line in out.splitlines() if line.startswith("STATUS ")]
    assert len(status) == len(commands), out
    for args, state in zip(commands, status):
        assert state == "CLEAN", args


@pytest.mark.slow
def test_killed_run_resumes_and_finishes(tmp_path):
    spec = _spec_file(tmp_path, epochs=6, checkpoint_every_n_steps=5)
    run_dir = tmp_path / "run"
    process = subprocess.Popen([*EDH, "train", str(spec), "--out", str(run_dir)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "metrics.csv").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) - 1 < 6, "the run finished before it was killed"
    run("train", "--resume", run_dir)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(6))
    assert "acc" in run("eval", run_dir).stdout


def test_describe_input_size_is_height_by_width():
    from edh.commands.describe import parse_size

    assert parse_size("64") == (64, 64) and parse_size("64x48") == (64, 48) and parse_size(None) is None
    for bad in ("3x64x64", "64xa", "0"):
        with pytest.raises(ValueError, match="height x width"):
            parse_size(bad)
