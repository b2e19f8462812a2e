"""``edh export --int8`` / ``edh predict --int8``: int8 graphs beside the fp32 ones, checked against fp32."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_export import SPECS, make_run


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return make_run(SPECS["classifier"], tmp_path_factory.mktemp("int8") / "classifier")


def test_export_int8_then_predict_gives_the_fp32_labels(classifier, tmp_path, cli, capsys):
    from edh.export.onnx import read_metadata

    images = []
    for index in range(3):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
        images.append(str(path))
    run_dir = str(classifier.path)
    assert cli(["predict", run_dir, *images, "--int8"]) == 2
    assert f"edh export {run_dir} --int8" in capsys.readouterr().err
    assert cli(["export", run_dir, "--int8"]) == 0
    text = capsys.readouterr().out
    assert "model.int8.onnx" in text and "top-1 agreement with fp32" in text
    assert read_metadata(classifier.path / "model.int8.onnx")["int8"] is True
    assert cli(["predict", run_dir, *images, "--backend", "onnxruntime"]) == 0
    fp32 = capsys.readouterr().out
    assert cli(["predict", run_dir, *images, "--int8"]) == 0
    int8 = capsys.readouterr().out
    labels = [line.split(":")[1].split()[0] for line in fp32.splitlines() if "\tlabel:" in line]
    assert labels and labels == [line.split(":")[1].split()[0] for line in int8.splitlines() if "\tlabel:" in line]
    assert cli(["predict", run_dir, *images, "--int8", "--bf16"]) == 2
    assert "--int8" in capsys.readouterr().err


def test_translator_int8_decodes(tmp_path, cli, capsys):
    run = make_run(SPECS["translator"], tmp_path / "translator")
    assert cli(["export", str(run.path), "--int8"]) == 0
    text = capsys.readouterr().out
    assert "model.int8.decoder_step.onnx" in text and "token agreement with fp32" in text
    assert cli(["predict", str(run.path), "seven", "two hundred", "--int8"]) == 0
    assert capsys.readouterr().out.count("\t") == 2
