"""The oneDNN-packed linear used by decoding steps: same values as F.linear, only where nothing is
differentiated or traced, and never stale after the weight changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edh.layers import packed
from edh.utils import cpu

pytestmark = pytest.mark.skipif(not packed.available(), reason="this PyTorch build has no oneDNN linear ops")


@pytest.fixture(autouse=True)
def packed_path(monkeypatch):
    """These tests are about the packed path itself: take it whatever the measured dispatch would pick."""
    monkeypatch.setenv("EDH_LINEAR", "packed")


def test_matches_f_linear_for_decoding_shapes():
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 32), torch.randn(96)
    for shape in [(8, 32), (3, 1, 32), (32, 32)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            torch.testing.assert_close(packed.linear(x, weight, bias), F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(packed.linear(x, weight), F.linear(x, weight), atol=1e-5, rtol=1e-5)
    assert weight in packed._PACKED  # the packed weight is cached
    x, weight, bias = (t.bfloat16() for t in (torch.randn(8, 32), weight, bias))
    with torch.inference_mode():
        torch.testing.assert_close(packed.linear(x, weight, bias).float(), F.linear(x, weight, bias).float(),
                                   atol=0.1, rtol=0.02)
    # bf16 is packed only where oneDNN has bf16 kernels (an AVX2-only CPU has none: the packing would raise)
    assert (weight in packed._PACKED) == cpu.native_bf16()


def test_bf16_without_bf16_kernels_is_plain_f_linear(monkeypatch):
    monkeypatch.setattr(cpu, "native_bf16", lambda: False)
    x, weight = torch.randn(4, 16).bfloat16(), torch.randn(8, 16).bfloat16()
    with torch.inference_mode():
        assert torch.equal(packed.linear(x, weight), F.linear(x, weight))
    assert weight not in packed._PACKED


def test_repacks_after_an_in_place_update():
    weight = torch.nn.Parameter(torch.randn(16, 8))
    x = torch.randn(4, 8)
    with torch.no_grad():
        before = packed.linear(x, weight)
        weight.mul_(2.0)  # what an optimizer step or load_state_dict does
        after = packed.linear(x, weight)
    torch.testing.assert_close(after, 2.0 * before, atol=1e-5, rtol=1e-5)


def test_autograd_and_tracing_take_the_plain_path():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    packed.linear(x, layer.weight, layer.bias).sum().backward()  # with grad: F.linear, so backward works
    assert x.grad is not None and layer.weight.grad is not None
    assert layer.weight not in packed._PACKED
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    traced = torch.jit.trace(lambda a: packed.linear(a, weight, bias), torch.randn(2, 8))
    assert "mkldnn" not in str(traced.graph)


def test_weights_made_under_inference_mode_take_the_plain_path():
    with torch.inference_mode():
        weight = torch.randn(16, 8)  # an inference tensor: it has no version counter
        x = torch.randn(4, 8)
        torch.testing.assert_close(packed.linear(x, weight), F.linear(x, weight))
    assert weight not in packed._PACKED
