"""Several heads on one model: partial labels, loss balancing, head surgery, features out, diagrams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import edh
from edh.workflows.surgery import parse_head_option, transfer_weights
from edh.train.balancing import UncertaintyWeighting, make_balancing
from edh.train.task import head_losses
from conftest import edh_in_process as run_edh, tiny_run_spec  # each command in this process (no fresh interpreter)
from test_cli import _digit_png

TWO_HEADS = {
    "encoder": {"name": "conv", "channels": [8, 16], "in_channels": 1},
    "heads": {"label": {"type": "classification", "num_classes": 3},
              "count": {"type": "regression", "source": "encoder.0", "weight": 0.5}},
}


def test_partial_labels_are_masked_per_head():
    model = edh.build(TWO_HEADS)
    outputs = model(torch.randn(4, 1, 8, 8))
    targets = {"label": torch.tensor([0, -1, 2, -1]), "count": torch.tensor([1.0, 2.0, float("nan"), float("nan")])}
    per_head, terms = head_losses(model, outputs, targets)
    expected = torch.nn.functional.cross_entropy(outputs["label"][[0, 2]], torch.tensor([0, 2]))
    torch.testing.assert_close(per_head["label"], expected)
    assert torch.isfinite(per_head["count"]) and set(terms) == {"label/ce", "count/smooth_l1"}
    nothing = {"label": torch.full((4,), -1), "count": torch.full((4,), float("nan"))}
    per_head, _ = head_losses(model, outputs, nothing)
    assert all(float(v.detach()) == 0.0 for v in per_head.values())
    sum(per_head.values()).backward()  # a batch with no labels for a head still backpropagates


def test_uncertainty_weighting_learns_to_downweight_a_noisy_task():
    balancing = make_balancing("uncertainty", {"clean": 1.0, "noisy": 1.0})
    assert isinstance(balancing, UncertaintyWeighting)
    optimizer = torch.optim.SGD(balancing.parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        balancing({"clean": torch.tensor(0.1), "noisy": torch.tensor(5.0)}).backward()
        optimizer.step()
    weights = balancing.current()
    assert weights["noisy"] < 0.5 < weights["clean"]  # exp(-s) tends to 1 / L
    assert make_balancing("fixed", {"a": 2.0})({"a": torch.tensor(3.0)}) == 6.0
    with pytest.raises(ValueError, match="fixed' or 'uncertainty"):
        make_balancing("magic", {"a": 1.0})


def test_transfer_weights_maps_classes_by_name():
    source = edh.build(encoder={"name": "conv", "channels": [8, 16], "in_channels": 1},
                       heads={"label": {"type": "classification", "num_classes": 3, "class_names": ["cat", "dog", "fox"]}})
    target = edh.build(encoder={"name": "conv", "channels": [8, 16], "in_channels": 1},
                       heads={"label": {"type": "classification", "num_classes": 3, "class_names": ["fox", "owl", "cat"]},
                              "count": {"type": "regression"}})
    fresh_owl = target.heads["label"].fc.weight[1].clone()
    report = transfer_weights(source, target)
    old, new = source.heads["label"].fc, target.heads["label"].fc
    torch.testing.assert_close(new.weight[0], old.weight[2])  # fox
    torch.testing.assert_close(new.weight[2], old.weight[0])  # cat
    torch.testing.assert_close(new.weight[1], fresh_owl)  # owl starts fresh
    torch.testing.assert_close(target.encoder.stages[0][0][0].weight, source.encoder.stages[0][0][0].weight)
    text = "\n".join(report)
    assert "kept the weights of 2 classes with the same name (fox, cat); 1 start fresh (owl)" in text
    assert "heads.count: new head, initialised fresh" in text and "encoder: weights kept" in text


def test_parse_head_option():
    assert parse_head_option("label:classification:num_classes=5,class_names=[a, b, c, d, e]") == (
        "label", {"type": "classification", "num_classes": 5, "class_names": ["a", "b", "c", "d", "e"]})
    assert parse_head_option("count:regression") == ("count", {"type": "regression"})
    with pytest.raises(ValueError, match="NAME:TYPE"):
        parse_head_option("label")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mt")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_run_spec(epochs=2)))
    run_edh("train", spec, "--out", tmp_path / "run")
    return tmp_path


@pytest.mark.slow
def test_finetune_replaces_a_head_and_keeps_the_encoder(digits_run):
    tmp_path = digits_run
    result = run_edh("finetune", tmp_path / "run", "--replace-head", "label:classification:num_classes=10",
                     "--add-head", "value:regression:source=encoder.0,target=label", "--freeze", "encoder", "--epochs", "1",
                     "--out", tmp_path / "tuned")
    assert "run folder" in result.stdout
    spec = yaml.safe_load((tmp_path / "tuned" / "spec.yaml").read_text())
    assert set(spec["model"]["heads"]) == {"label", "value"} and spec["train"]["freeze"] == ["encoder"]
    before = edh.load_run(tmp_path / "run").model
    after = edh.load_run(tmp_path / "tuned").model
    for (name, a), b in zip(before.encoder.state_dict().items(), after.encoder.state_dict().values()):
        assert torch.equal(a, b), name  # frozen encoder, BatchNorm statistics included


def test_finetune_errors(digits_run):
    result = run_edh("finetune", digits_run / "run", "--replace-head", "nope:classification", "--out",
                     digits_run / "x", check=False)
    assert result.returncode == 2 and "no head 'nope'" in result.stderr and "--add-head" in result.stderr
    result = run_edh("finetune", digits_run / "run", "--add-head", "size:regression", "--out", digits_run / "x",
                     check=False)
    assert result.returncode == 2 and "learns from target 'size'" in result.stderr and "label" in result.stderr


def test_embed_writes_pooled_features(digits_run, tmp_path):
    png = _digit_png(tmp_path)
    out = tmp_path / "feats.npy"
    run_edh("embed", digits_run / "run", png, png, "--role", "encoder.0", "--out", out)
    features = np.load(out)
    assert features.shape == (2, 8) and np.allclose(features[0], features[1])
    result = run_edh("embed", digits_run / "run", png, "--role", "decoder", "--out", out, check=False)
    assert result.returncode == 2 and "no decoder" in result.stderr


def test_predict_keeps_only_the_named_heads(digits_run, tmp_path):
    png = _digit_png(tmp_path)
    result = run_edh("predict", digits_run / "run", png, "--heads", "nope", check=False)
    assert result.returncode == 2 and "no head named nope" in result.stderr


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_diagram(tmp_path, suffix):
    spec = tmp_path / "model.yaml"
    spec.write_text(yaml.safe_dump(TWO_HEADS))
    out = tmp_path / f"model{suffix}"
    run_edh("diagram", spec, "--out", out, "--input-size", "16")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"Head:count" in data and b"<svg" in data


@pytest.mark.slow
@pytest.mark.parametrize("config", ["multitask-seg-cls-scenes.yaml", "multitask-det-seg-count-scenes.yaml"])
def test_shipped_multitask_configs_train_and_evaluate_every_head(tmp_path, config):
    from edh.workflows.demo import Demo, run_demo

    small = {"data.num_train": 32, "data.num_val": 16, "data.num_test": 16, "data.batch_size": 8}
    result = run_demo(Demo("multitask", "multi-task", config, small), tmp_path, quick=True)
    spec = yaml.safe_load((result.run_dir / "spec.yaml").read_text())
    assert set(result.metrics) == set(spec["model"]["heads"]) and len(result.metrics) >= 2
    assert all(np.isfinite(v) for metrics in result.metrics.values() for v in metrics.values())
    roles = [row.role for row in result.description.rows]
    assert all(f"Head:{name}" in roles for name in spec["model"]["heads"]), roles
