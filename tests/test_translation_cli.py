"""A translation run end to end through the CLI: train a tiny translator on ``numbers``, then eval
(BLEU / chrF / exact match + examples), translate, predict --input/--out, describe and list. The commands
run in this process through ``edh.cli.main``; whether `edh translate` loads Lightning is checked in a
fresh one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import edh_in_process as edh  # each command in this process (no fresh interpreter to start)

SPEC = {
    "model": {
        "encoder": {"name": "transformer", "preset": "tiny", "d_model": 48, "num_heads": 4, "ffn_dim": 96},
        "decoder": {"name": "transformer", "preset": "tiny", "d_model": 48, "num_heads": 4, "ffn_dim": 96},
        "heads": {"tokens": {"type": "lm", "source": "decoder", "label_smoothing": 0.1}},
    },
    "data": {"name": "numbers", "max_number": 999, "batch_size": 32},
    "train": {"epochs": 3, "lr": 0.005, "seed": 0},
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("translation")
    spec = tmp_path / "translator.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    edh("train", spec, "--out", tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
def test_run_folder_keeps_the_tokenizer_and_resolved_vocabulary(run_dir):
    assert (run_dir / "tokenizer.json").is_file()
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    info = json.loads((run_dir / "data.json").read_text())
    vocab = info["extra"]["vocab_size"]
    assert spec["model"]["encoder"]["vocab_size"] == spec["model"]["decoder"]["vocab_size"] == vocab
    assert spec["model"]["heads"]["tokens"]["vocab_size"] == vocab and spec["model"]["decoder"]["eos_id"] == 2
    assert "val/tokens/token_acc" in (run_dir / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_eval_prints_bleu_chrf_exact_match_and_examples(run_dir):
    text = edh("eval", run_dir).stdout
    assert "bleu=" in text and "chrf=" in text and "exact_match=" in text and "examples" in text
    metrics = json.loads(edh("eval", run_dir, "--json").stdout)["metrics"]["tokens"]
    assert set(metrics) == {"bleu", "chrf", "cer", "exact_match"}
    assert 0 <= metrics["exact_match"] <= 1 and metrics["chrf"] > 40  # 80 steps: well above chance (~90 here)


@pytest.mark.slow
def test_translate_and_predict_text(run_dir, tmp_path):
    out = edh("translate", run_dir, "one hundred and two", "seven", "--beam", "3").stdout.splitlines()
    assert len(out) == 2 and out[0].startswith("one hundred and two\t") and out[1].startswith("seven\t")
    source = tmp_path / "in.txt"
    source.write_text("twelve\n\ntwo hundred\n")
    result = edh("predict", run_dir, "--input", source, "--out", tmp_path / "out.txt")
    lines = (tmp_path / "out.txt").read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 4 and lines[1] == "" and lines[0]  # one line per input line
    assert "wrote 3 translations" in result.stdout
    missing = edh("translate", run_dir, "--input", tmp_path / "nope.txt", check=False)
    assert missing.returncode == 2 and "nope.txt" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_describe_and_list_show_the_translator(run_dir):
    data = json.loads(edh("describe", run_dir, "--json").stdout)
    assert [r["role"] for r in data["rows"]] == ["Encoder", "Decoder", "Head:tokens"]
    catalog = json.loads(edh("list", "--json").stdout)
    encoder = next(r for r in catalog["encoders"] if r["name"] == "transformer")
    decoder = next(r for r in catalog["decoders"] if r["name"] == "transformer")
    assert encoder["produces"] == "sequence" and "transformer" in decoder["fits"]
    assert "lm" in {r["name"] for r in catalog["heads"]}
    assert {"numbers", "de-en", "tsv"} <= {r["name"] for r in catalog["datasets"]}


@pytest.mark.slow
def test_translate_does_not_import_lightning(run_dir):
    code = (f"import sys\nfrom edh.cli import main\nmain(['translate', {str(run_dir)!r}, 'five'])\n"
            "print('LIGHTNING' if 'lightning' in sys.modules else 'CLEAN')")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=300).stdout
    assert out.strip().endswith("CLEAN")
