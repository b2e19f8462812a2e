"""Every registered encoder, decoder and head through the shared role tester (tests/roles.py).

For each component, on its tiny case (batch 2): the real output matches the declared ``out_spec``
(encoders, decoders) and is finite; heads' ``predict`` runs and ``format_prediction`` gives text; a
backward pass (a random projection of the outputs, or a head's ``loss`` on synthetic targets) gives
a gradient to every trainable parameter and reaches the features; the weights round-trip through
safetensors to equal outputs; the ONNX export matches eager PyTorch (slow).
"""

from __future__ import annotations

import pytest
import torch

from edh.core.builder import build_component
from edh.utils.io import load_tensors, save_tensors
from edh.heads.base import Head
from roles import (BATCH, TINY, Rig, all_registered, check_finite, check_matches_spec, export_and_check, flat_tensors,
                   leaves, missing_cases, stale_cases, weighted_sum)


def cases(test: str, role: str | None = None) -> list:
    """``(role, name)`` of every registered component (of ``role``), with the case's strict xfail for ``test``."""
    out = []
    for key in all_registered():
        if role is not None and key[0] != role:
            continue
        case = TINY.get(key)
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail[test])] if case and test in case.xfail else []
        out.append(pytest.param(*key, id=f"{key[0]}-{key[1]}", marks=marks))
    return out


def test_every_registered_component_has_a_tiny_case():
    missing, stale = missing_cases(), stale_cases()
    assert not missing, f"registered without a case in tests/roles.py TINY (add one): {', '.join(missing)}"
    assert not stale, f"cases in tests/roles.py TINY for components no longer registered: {', '.join(stale)}"


def test_a_component_without_a_case_is_named(registry_snapshot):
    class Caseless(Head):
        pass

    Caseless.__module__ = "edh.heads.caseless"  # as a new head module in edh would be
    registry_snapshot.register_head("test_caseless")(Caseless)

    assert missing_cases() == ["head 'test_caseless'"]
    with pytest.raises(AssertionError, match="no case in tests/roles.py TINY"):
        Rig("head", "test_caseless")


def test_exceptions_are_documented():
    for key, case in TINY.items():
        assert all(reason.strip() for reason in case.no_grad.values()), f"{key}: a no_grad entry without a reason"
        assert case.export in ("dynamic", "fixed", "none"), f"{key}: export is {case.export!r}"
        assert case.export == "dynamic" or case.export_note, f"{key}: export {case.export!r} needs an export_note"
        assert all(reason.strip() for reason in case.xfail.values()), f"{key}: an xfail without a reason"


# ---- outputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role, name", cases("outputs", "encoder") + cases("outputs", "decoder"))
def test_output_matches_out_spec(role, name):
    rig = Rig(role, name)
    component = rig.component.eval()
    inputs = rig.inputs()
    context = rig.context(inputs)
    if role == "encoder":  # the dummy input `describe` traces with has the kind and shape of a real one
        example = component.example_input(rig.case.size, batch_size=BATCH)
        assert (example.shape, example.dtype) == (inputs.shape, inputs.dtype)
        component.check_input(inputs)
    with torch.no_grad():
        output = rig.run(component, rig.features(inputs, context), context)
    check_matches_spec(component.out_spec, output, rig.output_size(inputs, context), BATCH)
    assert component.out_spec.kind == getattr(component, "produces", component.out_spec.kind)
    check_finite(output, rig.case.not_finite)
    if role == "decoder" and component.objective() is not None:  # the head type scoring it exists and fits
        head_type, options = component.objective()
        build_component("head", head_type, options, "decoder (its objective)", component.out_spec)


@pytest.mark.parametrize("role, name", cases("outputs", "head"))
def test_head_outputs_and_predict(role, name):
    rig = Rig(role, name)
    head = rig.component.eval()
    inputs = rig.inputs()
    context = rig.context(inputs)
    with torch.no_grad():
        outputs = head(rig.features(inputs, context), **context)
        check_finite(outputs, rig.case.not_finite)
        meta = {key: context[key] for key in ("input_size",) if key in context}
        prediction = head.predict(outputs, inputs=inputs, **meta)
    assert all(torch.isfinite(t).all() for t in flat_tensors(prediction) if t.is_floating_point())
    for index in range(BATCH):
        line = head.format_prediction(prediction, index)
        assert isinstance(line, str), f"format_prediction gave a {type(line).__name__}"


# ---- gradients ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role, name", cases("gradients"))
def test_every_trainable_parameter_gets_a_gradient(role, name):
    rig = Rig(role, name)
    component = rig.component.train()
    inputs = rig.inputs()
    context = rig.context(inputs)
    features = leaves(rig.features(inputs, context))
    if role == "head":
        targets = rig.targets(inputs, context)
        outputs = component(features, **context, targets=targets)
        terms = component.loss(outputs, component.select_targets(targets, rig.case.target))
        assert terms and all(torch.isfinite(t).all() for t in terms.values()), terms
        objective = sum(terms.values())
    else:
        objective = weighted_sum(rig.run(component, features, context))
    objective.backward()
    exempt = rig.case.no_grad
    trainable = {n: p for n, p in component.named_parameters() if p.requires_grad}
    missing = sorted(n for n, p in trainable.items()
                     if (p.grad is None or not p.grad.any()) and not any(n.startswith(e) for e in exempt))
    assert not missing, f"no gradient reaches {missing}"
    bad = sorted(n for n, p in trainable.items() if p.grad is not None and not torch.isfinite(p.grad).all())
    assert not bad, f"non-finite gradients in {bad}"
    for prefix, reason in exempt.items():
        listed = [n for n in trainable if n.startswith(prefix)]
        assert listed, f"no_grad lists {prefix!r} ({reason}) but there is no such parameter"
        assert all(trainable[n].grad is None or not trainable[n].grad.any() for n in listed), \
            f"no_grad lists {prefix!r} ({reason}) but it gets a gradient now: drop the exception"
    if role != "encoder":
        reached = [t for t in flat_tensors(features) if t.requires_grad and t.grad is not None and t.grad.any()]
        assert reached, "the backward pass does not reach the features the component reads"


# ---- safetensors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("role, name", cases("round_trip"))
def test_weights_round_trip_through_safetensors(role, name, tmp_path):
    rig = Rig(role, name)
    component = rig.component
    inputs = rig.inputs()
    context = rig.context(inputs)
    features = rig.features(inputs, context)
    if role == "head" and rig.case.targets is not None:  # a training step moves BatchNorm statistics off defaults
        component.train()(features, **context, targets=rig.targets(inputs, context))
    elif role != "head":
        with torch.no_grad():
            rig.run(component.train(), features, context)
    path = save_tensors(tmp_path / f"{role}-{name}.safetensors", component.state_dict())
    torch.manual_seed(1)
    again = rig.build()
    loaded = load_tensors(path)
    assert set(loaded) == set(again.state_dict())
    again.load_state_dict(loaded)
    component.eval(), again.eval()
    with torch.no_grad():
        first, second = rig.run(component, features, context), rig.run(again, features, context)
    a, b = flat_tensors(first), flat_tensors(second)
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


# ---- ONNX -----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("role, name", cases("onnx"))
def test_onnx_export_matches_eager(role, name, tmp_path):
    pytest.importorskip("onnxruntime")
    rig = Rig(role, name)
    if rig.case.export == "none":
        pytest.skip(f"{role} {name!r} is not exported: {rig.case.export_note}")
    assert export_and_check(rig, tmp_path / f"{role}-{name}.onnx")


# ---- encoders: any channel count --------------------------------------------------------------------------
@pytest.mark.parametrize("in_channels", [1, 4])
@pytest.mark.parametrize("name", ["resnet18", "conv", "timm:test_resnet"])
def test_encoders_take_any_channel_count(name, in_channels):
    options = {"channels": [4, 8]} if name == "conv" else {}
    encoder = build_component("encoder", name, {"in_channels": in_channels, **options}, "encoder")
    output = encoder(torch.randn(2, in_channels, 32, 32))
    check_matches_spec(encoder.out_spec, output, (32, 32))
