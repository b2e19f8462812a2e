"""Model wiring and role-aware operations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edh
from edh.core.features import FeatureSpec
from edh.heads.base import Head
from edh.core.model import RoleMismatchError
from edh.core.registry import register_head
from edh.core.errors import SpecError
from conftest import TINY_CLASSIFIER


class SequenceOnlyHead(Head):
    """A head that only reads sequences (to test contract checks)."""

    accepts = ("sequence",)

    def __init__(self, in_spec: FeatureSpec, width: int = 4) -> None:
        super().__init__(in_spec)
        self.proj = nn.Linear(in_spec.width, width)


@pytest.fixture
def sequence_only_head(registry_snapshot):
    """``test_sequence_only`` registered for one test (the registry is restored afterwards)."""
    register_head("test_sequence_only")(SequenceOnlyHead)


def test_forward_returns_one_output_per_head():
    model = edh.build(encoder={"name": "test_resnet", "in_channels": 1},
                      heads={"label": {"type": "classification", "num_classes": 10},
                             "coarse": {"type": "classification", "num_classes": 3, "source": "encoder.2"}})
    out = model(torch.randn(2, 1, 32, 32))
    assert set(out) == {"label", "coarse"} and out["label"].shape == (2, 10) and out["coarse"].shape == (2, 3)
    assert model.heads["coarse"].fc.in_features == model.encoder.out_spec.channels[2]


def test_mismatch_is_found_at_build_time_and_names_both_roles(sequence_only_head):
    with pytest.raises(RoleMismatchError) as error:
        edh.build(encoder="test_resnet", heads={"seq": {"type": "test_sequence_only"}})
    message = str(error.value)
    assert "head 'seq'" in message and "test_sequence_only" in message and "test_resnet" in message
    assert "pyramid" in message and "sequence" in message and "(B, T, C)" in message


def test_source_level_out_of_range():
    with pytest.raises(RoleMismatchError, match=r"level 9.*levels 0\.\.4"):
        edh.build(encoder="test_resnet", heads={"label": {"type": "classification", "num_classes": 2, "source": "encoder.9"}})


def test_decoder_source_without_decoder():
    with pytest.raises(SpecError, match="no decoder"):
        edh.build(encoder="test_resnet", heads={"label": {"type": "classification", "num_classes": 2, "source": "decoder"}})


def test_model_needs_a_head_or_a_decoder():
    with pytest.raises(SpecError, match="at least one head, or a decoder whose output is the result"):
        edh.build(encoder="test_resnet")
    with pytest.raises(SpecError, match="the decoder 'transformer' needs a head"):  # a step decoder has no objective
        edh.build(encoder={"name": "transformer", "vocab_size": 50, "preset": "tiny"},
                  decoder={"name": "transformer", "vocab_size": 50, "preset": "tiny"})
    denoiser = edh.build(encoder="test_resnet", decoder="fpn")  # any other decoder: scored by reconstruction
    assert set(denoiser.tasks()) == {"decoder"} and not len(denoiser.heads)


def test_wrong_channel_count_at_predict_time():
    model = edh.build(TINY_CLASSIFIER)
    with pytest.raises(ValueError, match=r"built for 1-channel images but got 3 channels.*in_channels=3"):
        model(torch.randn(1, 3, 32, 32))


def test_freeze_keeps_batchnorm_in_eval_and_stops_gradients():
    model = edh.build(TINY_CLASSIFIER).freeze("encoder")
    model.train()
    bns = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    before = [m.running_mean.clone() for m in bns]
    model(torch.randn(4, 1, 32, 32))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))
    model.unfreeze("encoder").train()
    assert all(m.training for m in bns)


def test_param_groups_per_role():
    model = edh.build(TINY_CLASSIFIER)
    groups = model.param_groups({"encoder": 1e-4, "heads": 1e-2}, weight_decay=0.05)
    rates = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert rates["encoder"] == (1e-4, 0.05) and rates["encoder.no_decay"] == (1e-4, 0.0)
    assert rates["heads.label"] == (1e-2, 0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_replace_add_and_remove_heads_keep_the_encoder():
    model = edh.build(TINY_CLASSIFIER)
    encoder_state = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.replace_head("label", {"type": "classification", "num_classes": 5})
    model.add_head("extra", {"type": "classification", "num_classes": 2})
    assert model.eval()(torch.randn(2, 1, 32, 32))["label"].shape == (2, 5)
    assert model.spec.heads["label"].model_extra["num_classes"] == 5
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_state.items())
    with pytest.raises(SpecError, match="exists already"):
        model.add_head("extra", {"type": "classification", "num_classes": 2})
    model.remove_heads(["extra"])
    assert list(model.heads) == ["extra"] and list(model.spec.heads) == ["extra"]


def test_describe_rows_shapes_params_and_macs():
    model = edh.build(encoder="resnet50", heads={"label": {"type": "classification", "num_classes": 1000}})
    description = model.describe((224, 224))
    roles = [r.role for r in description.rows]
    assert roles == ["Encoder", "Head:label"]
    encoder = description.rows[0]
    assert encoder.output[-1] == "(1, 2048, 7, 7)" and len(encoder.output) == 5
    assert description.total_params == 25_557_032
    assert 4.0e9 < description.total_macs < 4.2e9  # ResNet-50: 4.1 GMACs at 224x224
    assert description.rows[1].input == ["(1, 2048, 7, 7)"]
    assert "Head:label" in description.render()
