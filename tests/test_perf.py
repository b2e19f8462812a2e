"""Tests for edh.utils.perf: BatchNorm folding, channels_last, bf16 autocast, compile fallback."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import edh
from edh.utils import perf

MODELS = {  # encoder -> input shape (B, C, H, W)
    "test_resnet": (2, 3, 64, 64),
    "conv": (2, 1, 32, 32),
}


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so folding really changes the weights."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator))
    return model


def _build(encoder: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = edh.build(encoder=encoder, heads={"label": {"type": "classification", "num_classes": 3}})
    return _randomize_batchnorm(model).eval(), torch.randn(*MODELS[encoder])


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("encoder", list(MODELS))
def test_fold_batchnorm_matches_and_removes_every_batchnorm(encoder):
    model, x = _build(encoder)
    folded = perf.fold_batchnorm(model)
    assert _count(folded, nn.BatchNorm2d) == 0
    assert _count(model, nn.BatchNorm2d) > 0  # the original is left alone
    assert not folded.training
    with torch.no_grad():
        torch.testing.assert_close(folded(x)["label"], model(x)["label"], atol=1e-4, rtol=1e-4)


class _ConvReused(nn.Module):
    """The conv's output feeds the BatchNorm and the sum: folding would change the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so it must be left alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.bn(self.conv(x))
        return self.conv(x)


@pytest.mark.parametrize("module", [_ConvReused(), _Untraceable(),
                                    nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1))])
def test_fold_batchnorm_leaves_unsafe_patterns_alone(module):
    module = _randomize_batchnorm(module).eval()
    folded = perf.fold_batchnorm(module)
    assert _count(folded, nn.BatchNorm2d) == 1
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), module(x))


def test_fold_batchnorm_skips_a_conv_shared_by_two_places():
    conv = nn.Conv2d(3, 3, 1)
    model = _randomize_batchnorm(nn.Sequential(conv, nn.BatchNorm2d(3), conv)).eval()
    folded = perf.fold_batchnorm(model)
    assert _count(folded, nn.BatchNorm2d) == 1
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


@pytest.mark.parametrize("encoder", list(MODELS))
def test_prepare_for_inference_channels_last_and_same_outputs(encoder):
    model, x = _build(encoder)
    prepared = perf.prepare_for_inference(model)
    assert not prepared.training and _count(prepared, nn.BatchNorm2d) == 0
    weights = [p for p in prepared.parameters() if p.ndim == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    x_cl = perf.to_channels_last(x)
    assert x_cl.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(prepared(x_cl)["label"], model(x)["label"], atol=1e-4, rtol=1e-4)


def test_prepare_for_inference_options_and_to_channels_last_passthrough():
    model, x = _build("test_resnet")
    plain = perf.prepare_for_inference(model, channels_last=False, fold_bn=False)
    assert _count(plain, nn.BatchNorm2d) == _count(model, nn.BatchNorm2d) and not plain.training
    assert next(plain.encoder.parameters()).is_contiguous()
    bf16 = perf.prepare_for_inference(model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    with torch.inference_mode(), perf.autocast("cpu"):
        assert bf16(perf.to_channels_last(x))["label"].dtype == torch.bfloat16  # fp32 input is fine
    tokens = torch.ones(2, 5, dtype=torch.long)
    assert perf.to_channels_last(tokens) is tokens
    assert perf.to_channels_last([x]) == [x]


@pytest.mark.parametrize("encoder", list(MODELS))
def test_autocast_gives_bf16_close_to_fp32(encoder):
    model, x = _build(encoder)
    prepared = perf.prepare_for_inference(model)
    x = perf.to_channels_last(x)
    with torch.inference_mode():
        reference = prepared(x)["label"]
        with perf.autocast("cpu"):
            low = prepared(x)["label"]
        with perf.autocast("cpu", enabled=False):
            assert prepared(x)["label"].dtype == torch.float32
    assert low.dtype == torch.bfloat16
    scale = reference.abs().max().item()
    torch.testing.assert_close(low.float(), reference, atol=0.05 * scale, rtol=0.05)


def test_maybe_compile_disabled_returns_the_module():
    model, _ = _build("conv")
    assert perf.maybe_compile(model, enabled=False) is model


def test_maybe_compile_falls_back_when_compile_raises(monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    model, x = _build("conv")
    with caplog.at_level(logging.WARNING, logger="edh.utils.perf"):
        result = perf.maybe_compile(model)
    assert result is model
    assert "torch.compile failed" in caplog.text and "no compiler here" in caplog.text
    with torch.no_grad():
        assert result(x)["label"].shape == (2, 3)


def test_maybe_compile_falls_back_when_the_first_call_fails(monkeypatch, caplog):
    calls = []

    def lazy_broken_compile(module, **kwargs):
        def compiled(*args, **kw):
            calls.append(1)
            raise RuntimeError("inductor exploded")

        return compiled

    monkeypatch.setattr(torch, "compile", lazy_broken_compile)
    model, x = _build("conv")
    wrapped = perf.maybe_compile(model)
    assert isinstance(wrapped, perf.CompiledOrEager) and wrapped.compiled
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="edh.utils.perf"):
        torch.testing.assert_close(wrapped(x)["label"], model(x)["label"])
        assert not wrapped.compiled and "inductor exploded" in caplog.text
        wrapped(x)
    assert len(calls) == 1  # later calls go straight to eager
    assert set(wrapped.state_dict()) == {f"module.{k}" for k in model.state_dict()}


def test_maybe_compile_keeps_compiled_when_the_inputs_are_at_fault(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)  # "compiled" = eager itself
    model, _ = _build("conv")
    wrapped = perf.maybe_compile(model)
    with pytest.raises(ValueError, match="channels"):
        wrapped(torch.randn(1, 3, 32, 32))  # conv encoder wants 1 channel
    assert wrapped.compiled


@pytest.mark.slow
def test_maybe_compile_really_compiles_and_matches_eager():
    model, x = _build("conv")
    prepared = perf.prepare_for_inference(model)
    compiled = perf.maybe_compile(prepared)
    x = perf.to_channels_last(x)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)["label"], prepared(x)["label"], atol=1e-4, rtol=1e-4)


def test_fold_batchnorm_folds_a_transposed_conv_decoder():
    torch.manual_seed(0)
    model = edh.build(encoder={"name": "conv", "channels": [8, 16], "in_channels": 1},
                      decoder={"name": "conv_transpose", "out_channels": 1, "latent_dim": 8, "image_size": 8,
                               "norm": True}, heads={})
    model = _randomize_batchnorm(model).eval()
    x = torch.randn(2, 1, 8, 8)
    folded = perf.fold_batchnorm(model)
    assert _count(model.decoder, nn.BatchNorm2d) > 0 and _count(folded, nn.BatchNorm2d) == 0
    with torch.no_grad():
        torch.testing.assert_close(folded(x)["decoder"], model(x)["decoder"], atol=1e-4, rtol=1e-4)


def test_inference_model_is_called_like_the_model():
    model, x = _build("test_resnet")
    fast = perf.InferenceModel(model)
    assert fast.heads is fast.model.heads and "label" in fast.head_specs  # the prepared model's attributes
    assert _count(fast, nn.BatchNorm2d) == 0 and _count(model, nn.BatchNorm2d) > 0  # model itself unchanged
    with torch.inference_mode():
        reference = model(x)["label"]
        torch.testing.assert_close(fast(x)["label"], reference, atol=1e-4, rtol=1e-4)  # contiguous input is fine
        low = perf.InferenceModel(model, bf16=True)(x)
    assert low["label"].dtype == torch.float32  # bf16 inside, float32 out
    torch.testing.assert_close(low["label"], reference, atol=0.05 * reference.abs().max().item(), rtol=0.05)
    assert perf.to_float32({"a": [torch.ones(1, dtype=torch.bfloat16)], "b": torch.ones(1, dtype=torch.long)}) == {
        "a": [torch.ones(1)], "b": torch.ones(1, dtype=torch.long)}


@pytest.mark.slow
def test_inference_model_compiles_with_freezing():
    model, x = _build("conv")
    fast = perf.InferenceModel(model, compile=True)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x)["label"], model(x)["label"], atol=1e-4, rtol=1e-4)
    assert fast.compiled and not perf.InferenceModel(model).compiled


def test_inference_model_copies():
    import copy

    model, x = _build("conv")
    fast = perf.InferenceModel(model)
    clone = copy.deepcopy(fast)
    with torch.inference_mode():
        torch.testing.assert_close(clone(x)["label"], fast(x)["label"])
    with pytest.raises(AttributeError):
        _ = fast.no_such_attribute
