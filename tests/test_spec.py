"""One spec, two spellings: Python and YAML build the same model; errors name the key path."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import edh
from edh.core.registry import UnknownComponentError
from edh.core.spec import ModelSpec, RunSpec, from_yaml, load_spec, parse_model_spec, parse_run_spec, to_yaml
from edh.core.errors import SpecError

YAML_SPEC = """
encoder: {name: resnet18}
heads:
  label: {type: classification, num_classes: 10}
"""


def _tree(model):
    return [(name, type(module).__name__) for name, module in model.named_modules()]


def test_python_and_yaml_build_the_same_model(tmp_path):
    from_python = edh.build(encoder="resnet18", heads={"label": {"type": "classification", "num_classes": 10}})
    path = tmp_path / "model.yaml"
    path.write_text(YAML_SPEC)
    from_file = edh.Model(load_spec(path))
    assert _tree(from_python) == _tree(from_file)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(from_python) == count(from_file) == 11_181_642
    assert from_python.spec == from_file.spec


def test_spec_yaml_round_trip_is_exact():
    spec = parse_model_spec(yaml.safe_load(YAML_SPEC))
    assert from_yaml(to_yaml(spec)) == spec
    run = parse_run_spec({"model": yaml.safe_load(YAML_SPEC), "data": {"name": "digits", "image_size": 16},
                          "train": {"lr": {"encoder": 1e-4, "heads": 1e-3}, "freeze": ["encoder"]}})
    assert from_yaml(to_yaml(run), RunSpec) == run
    assert to_yaml(from_yaml(to_yaml(run), RunSpec)) == to_yaml(run)


def test_unknown_component_lists_close_matches():
    with pytest.raises(UnknownComponentError, match=r"unknown encoder 'resnet51'.*did you mean.*'resnet50'"):
        edh.build(encoder="resnet51", heads={"label": {"type": "classification", "num_classes": 2}})
    with pytest.raises(UnknownComponentError, match=r"unknown head 'clasification'.*'classification'"):
        edh.build(encoder="conv", heads={"label": {"type": "clasification", "num_classes": 2}})


def test_unknown_option_names_the_key_path():
    with pytest.raises(SpecError, match=r"heads\.label\.num_clases: head 'classification' has no option"):
        edh.build(encoder="conv", heads={"label": {"type": "classification", "num_clases": 2}})
    with pytest.raises(SpecError, match=r"encoder\.dept: encoder 'resnet18' has no option 'dept'"):
        edh.build(encoder={"name": "resnet18", "dept": 3}, heads={"label": {"type": "classification", "num_classes": 2}})


def test_bad_option_type_names_the_key_path():
    with pytest.raises(SpecError, match=r"heads\.label\.num_classes: .*integer.*'ten'"):
        edh.build(encoder="conv", heads={"label": {"type": "classification", "num_classes": "ten"}})


def test_missing_required_option_is_named():
    with pytest.raises(SpecError, match=r"heads\.label\.num_classes: required"):
        edh.build(encoder="conv", heads={"label": {"type": "classification"}})


def test_bad_run_spec_keys_are_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {encoder: {name: conv}, heads: {}}\ndata: {name: digits}\ntrain: {epoch: 3, lr: fast}\n")
    with pytest.raises(SpecError) as error:
        load_spec(path)
    message = str(error.value)
    assert str(path) in message and "train.epoch: unknown key" in message and "train.lr" in message


def test_spec_from_a_newer_edh_is_refused():
    with pytest.raises(SpecError, match=r"edh_version.*newer than the installed edh"):
        parse_run_spec({"edh_version": "99.0.0", "model": {"encoder": {"name": "conv"}}, "data": {"name": "digits"}})


def test_bad_source_is_refused():
    with pytest.raises(SpecError, match=r"heads\.label\.source"):
        parse_model_spec({"encoder": {"name": "conv"}, "heads": {"label": {"type": "classification", "source": "neck"}}})


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_spec(path)
    path.write_text("encoder: {name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


names = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="_-:"), min_size=1,
                max_size=12)
options = st.dictionaries(st.sampled_from(["num_classes", "dropout", "pool", "x", "top_k"]),
                          st.one_of(st.integers(-5, 50), st.floats(allow_nan=False, allow_infinity=False),
                                    st.text(max_size=5), st.booleans(), st.none()), max_size=3)


@settings(max_examples=60, deadline=None)
@given(encoder=names, head_type=names, head_options=options, weight=st.floats(allow_nan=False, allow_infinity=False))
def test_spec_parser_round_trips_or_fails_cleanly(encoder, head_type, head_options, weight):
    """Any mapping either parses (and then round-trips through YAML exactly) or raises SpecError."""
    data = {"encoder": {"name": encoder}, "heads": {"h": {"type": head_type, "weight": weight, **head_options}}}
    try:
        spec = parse_model_spec(data)
    except SpecError:
        return
    assert isinstance(spec, ModelSpec)
    assert from_yaml(to_yaml(spec)) == spec
