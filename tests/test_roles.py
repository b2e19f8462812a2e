"""Every registered encoder through the shared role tester: output matches out_spec, finite,
backward runs, weights round-trip through safetensors."""

from __future__ import annotations

import pytest
import torch

from edh.core.builder import build_component
from edh.utils.io import load_tensors, save_tensors
from roles import check_matches_spec, flat_tensors, registered, tiny_options


@pytest.mark.parametrize("name", registered("encoder"))
def test_encoder_contract(name, tmp_path):
    options = tiny_options("encoder", name)
    builder_name = f"timm:{options.pop('model_name')}" if name == "timm" else name
    encoder = build_component("encoder", builder_name, options, "encoder")
    size = (64, 48) if encoder.input_kind == "image" else (7,)
    inputs = encoder.example_input(size, batch_size=2)
    if encoder.input_kind == "image":
        inputs = torch.randn_like(inputs)
    output = encoder(inputs)
    if encoder.input_kind == "image":
        check_matches_spec(encoder.out_spec, output, size)
    tensors = flat_tensors(output)
    assert tensors and all(torch.isfinite(t).all() for t in tensors)
    sum(t.float().mean() for t in tensors).backward()
    assert any(p.grad is not None for p in encoder.parameters())
    save_tensors(tmp_path / "enc.safetensors", encoder.state_dict())
    again = build_component("encoder", builder_name, options, "encoder")
    again.load_state_dict(load_tensors(tmp_path / "enc.safetensors"))
    encoder.eval(), again.eval()
    with torch.no_grad():
        for a, b in zip(flat_tensors(encoder(inputs)), flat_tensors(again(inputs))):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("in_channels", [1, 4])
@pytest.mark.parametrize("name", ["resnet18", "conv", "timm:test_resnet"])
def test_encoders_take_any_channel_count(name, in_channels):
    options = {"channels": [4, 8]} if name == "conv" else {}
    encoder = build_component("encoder", name, {"in_channels": in_channels, **options}, "encoder")
    output = encoder(torch.randn(2, in_channels, 32, 32))
    check_matches_spec(encoder.out_spec, output, (32, 32))
