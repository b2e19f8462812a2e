"""Conv -> ReLU fusion for eager bf16 inference (`edh.utils.fusion`): the same outputs, the same
parameters and state-dict keys, and the fallback wherever the fused op does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import edh
from edh.utils import cpu
from edh.utils.fusion import ConvReLU, _fusable, fuse_conv_relu
from edh.utils.perf import InferenceModel, fold_batchnorm


def _resnet():
    torch.manual_seed(0)
    return edh.build(encoder={"name": "resnet18", "in_channels": 3},
                     heads={"label": {"type": "classification", "num_classes": 5}}).eval()


def test_resnet_blocks_and_the_stem_fuse_with_identical_outputs_and_keys():
    model = fold_batchnorm(_resnet())
    fused = copy.deepcopy(model)
    assert fuse_conv_relu(fused) == 9  # the stem and the first conv of each of the 8 blocks
    assert sum(isinstance(m, ConvReLU) for m in fused.modules()) == 9
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            a, b = copy.deepcopy(model).to(dtype), copy.deepcopy(fused).to(dtype)
            assert torch.equal(a(x.to(dtype))["label"], b(x.to(dtype))["label"]), dtype
    assert fused.encoder.check_input is not None  # the blocks and the encoder keep their classes' methods


def test_bf16_inference_model_fuses_and_agrees_with_the_unfused_model():
    model = _resnet()
    prepared = InferenceModel(model, bf16=True)
    # fused where oneDNN has bf16 kernels; an AVX2-only CPU keeps the plain convs (the fused op would raise)
    assert any(isinstance(m, ConvReLU) for m in prepared.modules()) == cpu.native_bf16()
    assert not any(isinstance(m, ConvReLU) for m in InferenceModel(model).modules())  # fp32: unfused
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out, reference = prepared(x)["label"], model(x)["label"]
    assert out.dtype == torch.float32 and (out - reference).abs().max() < 0.1 * reference.abs().max()


def test_the_fallback_is_relu_of_the_conv_under_autograd_and_tracing():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    plain = copy.deepcopy(conv)
    fused = fuse_conv_relu(nn.Sequential(conv, nn.Identity(), nn.ReLU()))
    assert fused == 1 and isinstance(conv, ConvReLU)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    y = conv(x)  # autograd on: the plain path, gradients flow
    y.sum().backward()
    assert x.grad is not None and torch.allclose(y, torch.relu(plain(x)))
    traced = torch.jit.trace(conv, x.detach())
    assert "relu" in str(traced.graph)


@pytest.mark.parametrize("module", [nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)),
                                    nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.ReLU())])
def test_what_is_not_a_plain_conv_then_relu_is_left_alone(module):
    assert fuse_conv_relu(module) == 0 and not any(isinstance(m, ConvReLU) for m in module.modules())


def test_without_bf16_kernels_nothing_fuses_in_bf16_and_bf16_warns_once(monkeypatch, caplog):
    """An AVX2-only CPU (no AVX-512 / AMX): oneDNN's bf16 convolution raises there, so bf16 takes the plain
    path, `InferenceModel` does not fuse, and ``--bf16`` says it is emulated, once."""
    monkeypatch.setattr(cpu, "native_bf16", lambda: False)
    cpu.warn_if_bf16_is_emulated.cache_clear()
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        assert _fusable(x, conv) and not _fusable(x.bfloat16(), conv.bfloat16())
    model = _resnet()
    with caplog.at_level("WARNING", logger="edh"):
        prepared = InferenceModel(model, bf16=True)
        InferenceModel(model, bf16=True)
    assert not any(isinstance(m, ConvReLU) for m in prepared.modules())
    warnings = [r for r in caplog.records if "no bfloat16 instructions" in r.getMessage()]
    assert len(warnings) == 1 and "--bf16" in warnings[0].getMessage()
    with torch.inference_mode():
        out = prepared(torch.randn(1, 3, 32, 32))["label"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    cpu.warn_if_bf16_is_emulated.cache_clear()
