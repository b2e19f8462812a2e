"""Text classification end to end: the ``text-labels`` TSV dataset and its errors, ``language-id``'s
splits (no sentence or dictionary entry in two splits), and a tiny classifier trained, evaluated and
asked through ``edh predict --text`` / ``--input``."""

from __future__ import annotations

import codecs
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from edh.core.errors import DataError, SpecError
from edh.data.base import DataFilesMissingError, build_data
from edh.data.text import DE_EN_FILE
from edh.data.text_classification import language_id_splits, stratified_split

WEATHER = ["rain all day", "snow in the hills", "a warm sunny day", "fog in the valley", "storms tonight",
           "cold wind from the north"]
FOOD = ["bake the bread", "fry the onions", "boil the pasta", "a pinch of salt", "whisk the eggs", "roast the meat"]


def write(path: Path, lines: list[str], newline: str = "\n", bom: bool = False) -> Path:
    data = newline.join(lines).encode() + newline.encode()
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + data)
    return path


def labelled(tmp_path: Path, name: str = "texts.tsv", **options) -> Path:
    rows = [f"{t}\tweather" for t in WEATHER] + [f"{t}\tfood" for t in FOOD]
    return write(tmp_path / name, rows, **options)


def build(path: Path, **options):
    return build_data("text-labels", {"path": str(path), "vocab_size": 100, **options})


# ---- text-labels ---------------------------------------------------------------------------------------
def test_tsv_gives_token_batches_labels_and_a_tokenizer(tmp_path):
    bundle = build(labelled(tmp_path), val_fraction=0.2, test_fraction=0.2, max_tokens=16)
    info = bundle.info
    assert info.input_kind == "tokens" and info.targets == {"label": "classification"}
    assert info.class_names == ["food", "weather"]  # sorted label names
    assert info.extra["tokenizer_file"] == "tokenizer.json" and "tokenizer.json" in bundle.files
    assert info.extra["encoder_defaults"] == {"vocab_size": info.extra["vocab_size"], "pad_id": 0}
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 2, 2)
    for split in (bundle.train, bundle.val, bundle.test):  # stratified: both classes in each split
        assert sorted(set(split.labels)) == [0, 1]
    tokens, targets = bundle.collate_fn([bundle.train[0], bundle.train[1]])
    assert tokens.ndim == 2 and tokens.shape[0] == 2 and tokens.dtype == torch.long
    assert targets["label"].shape == (2,) and targets["label"].dtype == torch.long
    assert all(int(row[row != 0][-1]) == 2 for row in tokens)  # each text ends with <eos>
    assert info.fingerprint["splits"]["test"]["content_sha256"]  # eval notices a changed file


def test_tsv_header_names_bom_and_crlf(tmp_path):
    rows = ["label\tid\ttext"] + [f"weather\t{i}\t{t}" for i, t in enumerate(WEATHER)] + \
        [f"food\t{i}\t{t}" for i, t in enumerate(FOOD)]
    path = write(tmp_path / "header.tsv", rows, newline="\r\n", bom=True)
    bundle = build(path, has_header=True, text_column="text", label_column="label")
    texts = bundle.train.texts + bundle.val.texts + bundle.test.texts
    assert sorted(texts) == sorted(WEATHER + FOOD)  # no "\r", no header line, no BOM in a label
    assert bundle.info.class_names == ["food", "weather"]


@pytest.mark.parametrize("line, message", [
    ("rain again\t", "line 3: empty label"),
    ("\tweather", "line 3: empty text"),
    ("just some words", "line 3: 1 column, need 2"),
    ("   ", "line 3: blank"),
])
def test_tsv_bad_lines_are_named(tmp_path, line, message):
    path = write(tmp_path / "bad.tsv", ["rain all day\tweather", "bake the bread\tfood", line])
    with pytest.raises(DataError, match=message) as error:
        build(path)
    assert "skip_bad_lines" in str(error.value)


def test_tsv_skip_bad_lines_warns(tmp_path, caplog):
    path = labelled(tmp_path)
    path.write_text(path.read_text() + "no label here\n")
    with caplog.at_level(logging.WARNING, logger="edh"):
        bundle = build(path, skip_bad_lines=True)
    assert sum(map(len, (bundle.train, bundle.val, bundle.test))) == 12 and "line 13" in caplog.text


def test_tsv_column_errors(tmp_path):
    path = labelled(tmp_path)
    with pytest.raises(DataError, match="no column 'sentence'.*'rain all day', 'weather'"):
        build(path, has_header=True, text_column="sentence")
    with pytest.raises(SpecError, match="has_header is false"):
        build(path, text_column="text")
    with pytest.raises(SpecError, match="same column"):
        build(path, text_column=1, label_column=1)
    with pytest.raises(DataFilesMissingError, match="nope.tsv does not exist"):
        build(tmp_path / "nope.tsv")


def test_tsv_label_unseen_in_training_and_conflicting_labels(tmp_path):
    train = labelled(tmp_path)
    test = write(tmp_path / "test.tsv", ["more rain\tweather", "a goal in extra time\tsport"])
    with pytest.raises(DataError, match=r"test\.tsv: the test file has 1 label that no training line has: 'sport' "
                                        r"\(line 2\)"):
        build(train, test_path=str(test))
    conflict = write(tmp_path / "conflict.tsv", ["rain all day\tweather", "bake the bread\tfood",
                                                 "rain all day\tfood"])
    with pytest.raises(DataError, match="line 3 \\('food'\\) repeats the text of line 1"):
        build(conflict)


def test_tsv_repeated_lines_stay_in_one_split(tmp_path):
    path = labelled(tmp_path)
    path.write_text(path.read_text() * 3)
    bundle = build(path, val_fraction=0.2, test_fraction=0.2)
    texts = bundle.train.texts + bundle.val.texts + bundle.test.texts
    assert sorted(texts) == sorted(WEATHER + FOOD)


def test_stratified_split_keeps_every_class_in_train():
    labels = ["a"] * 20 + ["b"] * 2 + ["c"]
    train, val, test = stratified_split(labels, 0.45, 0.45, seed=3)
    assert sorted(train + val + test) == list(range(len(labels)))
    assert {labels[i] for i in train} == {"a", "b", "c"}


# ---- language-id ---------------------------------------------------------------------------------------
def test_language_id_splits_keep_entries_together():
    pairs = [(f"das ist satz {i}", f"this is sentence {i}") for i in range(200)]
    pairs += [("das ist satz 7", "this is phrase 7"), ("ein anderer satz 7", "this is phrase 7"),
              ("Status quo ante", "Status quo ante")]  # shared sides; a sentence in both languages
    splits = language_id_splits(pairs, 0.1, 0.2, seed=0)
    where = {text: (split, language) for split, rows in splits.items() for text, language in rows}
    assert sum(map(len, splits.values())) == len(where)  # each sentence once
    assert "Status quo ante" not in where
    for german, english in pairs[:-1]:
        assert where[german][0] == where[english][0] and where[german][1] == "de" and where[english][1] == "en"
    assert len({where[t][0] for t in ("das ist satz 7", "this is phrase 7", "ein anderer satz 7")}) == 1


@pytest.mark.skipif(not Path(DE_EN_FILE).is_file(), reason="trans-de-en is not installed (apt-get install trans-de-en)")
def test_language_id_on_trans_de_en_has_no_leakage():
    bundle = build_data("language-id", {"limit": 1500, "vocab_size": 500})
    assert bundle.info.class_names == ["de", "en"] and bundle.info.targets == {"label": "classification"}
    splits = {name: set(getattr(bundle, name).texts) for name in ("train", "val", "test")}
    assert not (splits["train"] & splits["test"] or splits["train"] & splits["val"] or splits["val"] & splits["test"])
    for name in ("train", "test"):
        labels = getattr(bundle, name).labels
        assert 0.4 < sum(labels) / len(labels) < 0.6  # both sides of each entry: balanced


def test_language_id_without_the_package_says_what_to_install(tmp_path):
    with pytest.raises(DataFilesMissingError, match="apt-get install trans-de-en.*name: language-id"):
        build_data("language-id", {"path": str(tmp_path / "de-en")})


# ---- train, eval, predict through the CLI ----------------------------------------------------------------
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    from edh.cli import main

    tmp_path = tmp_path_factory.mktemp("text-classifier")
    data = labelled(tmp_path)
    spec = {
        "model": {"encoder": {"name": "transformer", "preset": "tiny"}, "heads": {"label": {"type": "classification"}}},
        "data": {"name": "text-labels", "path": str(data), "vocab_size": 100, "batch_size": 4, "test_fraction": 0.2},
        "train": {"epochs": 1, "lr": 0.01, "seed": 0},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    logger = logging.getLogger("edh")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    try:
        assert main(["train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"), "--max-steps", "2"]) == 0
    finally:
        logger.handlers[:] = saved[0]
        logger.propagate, logger.level = saved[1], saved[2]
    return tmp_path / "run", data


def test_eval_prints_accuracy(text_run, cli, capsys):
    run_dir, _ = text_run
    assert (run_dir / "tokenizer.json").is_file()
    assert cli(["eval", str(run_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]["label"]
    assert 0 <= metrics["acc"] <= 1
    assert cli(["eval", str(run_dir)]) == 0
    assert "[label] acc=" in capsys.readouterr().out


def test_predict_text_and_input_print_labels_with_probabilities(text_run, cli, capsys, tmp_path):
    run_dir, _ = text_run
    assert cli(["predict", str(run_dir), "--text", "rain in the hills", "--text", "-fry the eggs", "bake"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["bake", "rain in the hills", "-fry the eggs"]
    for line in lines:
        head, answer = line.split("\t")[1].split(": ")
        (first, p1), (second, p2) = (part.split() for part in answer.split(", "))
        assert head == "label" and {first, second} == {"food", "weather"}
        assert abs(float(p1) + float(p2) - 1) < 0.01 and float(p1) >= float(p2)
    source = write(tmp_path / "in.txt", ["snow tonight", "", "boil the eggs"], newline="\r\n", bom=True)
    assert cli(["predict", str(run_dir), "--input", str(source), "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["snow tonight", "boil the eggs"]
    assert all(len(line.split(": ")[1].split(", ")) == 1 for line in lines)
    assert cli(["predict", str(run_dir)]) == 2 and "--text" in capsys.readouterr().err


def test_eval_refuses_a_changed_file(text_run, cli, capsys):
    run_dir, data = text_run
    data.write_text(data.read_text().replace("snow in the hills", "snow on the hills"))
    assert cli(["eval", str(run_dir)]) == 2
    assert "differ from the run's" in capsys.readouterr().err


def test_text_on_an_image_run_is_refused(tmp_path, cli, capsys):
    from conftest import tiny_run_spec

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_run_spec(epochs=1)))
    assert cli(["train", str(spec), "--out", str(tmp_path / "run"), "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert cli(["predict", str(tmp_path / "run"), "--text", "a sentence"]) == 2
    assert "takes image inputs" in capsys.readouterr().err


def test_top_k_accuracy_is_not_merged_with_top_1_accuracy():
    import torch

    from edh.core.builder import build_component
    from edh.core.features import FeatureSpec

    head = build_component("head", "classification", {"num_classes": 3, "top_k": 2}, "heads.label",
                           FeatureSpec("vector", (4,)))
    metrics = head.make_metrics("test")
    logits = torch.tensor([[3.0, 2.0, 0.0], [3.0, 2.0, 0.0], [0.0, 3.0, 2.0]])
    for _ in range(2):  # the first batch: every top-1 guess right; the second: top-2 only
        head.update_metrics(metrics, logits, torch.tensor([0, 0, 1]) if _ == 0 else torch.tensor([1, 1, 2]))
    values = metrics.compute()
    assert float(values["acc"]) == 0.5 and float(values["top2"]) == 1.0
