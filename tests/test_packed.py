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
    assert packed.is_packed(weight)  # the packed weight is cached
    x, weight, bias = (t.bfloat16() for t in (torch.randn(8, 32), weight, bias))
    with torch.inference_mode():
        torch.testing.assert_close(packed.linear(x, weight, bias).float(), F.linear(x, weight, bias).float(),
                                   atol=0.1, rtol=0.02)
    # bf16 is packed only where oneDNN has bf16 kernels (an AVX2-only CPU has none: the packing would raise)
    assert packed.is_packed(weight) == cpu.native_bf16()


def test_bf16_without_bf16_kernels_is_plain_f_linear(monkeypatch):
    monkeypatch.setattr(cpu, "native_bf16", lambda: False)
    x, weight = torch.randn(4, 16).bfloat16(), torch.randn(8, 16).bfloat16()
    with torch.inference_mode():
        assert torch.equal(packed.linear(x, weight), F.linear(x, weight))
    assert not packed.is_packed(weight)


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
    assert not packed.is_packed(layer.weight)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    traced = torch.jit.trace(lambda a: packed.linear(a, weight, bias), torch.randn(2, 8))
    assert "mkldnn" not in str(traced.graph)


def test_weights_made_under_inference_mode_take_the_plain_path():
    with torch.inference_mode():
        weight = torch.randn(16, 8)  # an inference tensor: it has no version counter
        x = torch.randn(4, 8)
        torch.testing.assert_close(packed.linear(x, weight), F.linear(x, weight))
    assert not packed.is_packed(weight)


def test_each_weight_keeps_its_kernel_until_the_dispatch_is_reset(monkeypatch):
    from edh.layers import dispatch

    monkeypatch.delenv("EDH_LINEAR")
    dispatch.reset()
    weight, x = torch.randn(16, 8), torch.randn(4, 8)
    measured = []  # the shape classes decided
    choose = dispatch.choose
    monkeypatch.setattr(dispatch, "choose", lambda *args: measured.append(args[1]) or choose(*args))
    with torch.no_grad():
        for _ in range(3):
            packed.linear(x, weight)
        assert len(measured) == 1  # decided at the first call, then kept with the weight
        packed.linear(torch.randn(2, 8), weight)  # another number of rows: decided again
        assert len(measured) == 2
        dispatch.reset()
        packed.linear(x, weight)
    assert len(measured) == 3
    dispatch.reset()


def test_a_freed_weight_leaves_no_entry_behind():
    x = torch.randn(4, 8)
    before = len(packed._ENTRIES)
    with torch.no_grad():
        for _ in range(5):
            packed.linear(x, torch.randn(16, 8))
    assert len(packed._ENTRIES) == before


def test_onnx_export_flags_are_read_as_torch_reads_them(monkeypatch):
    exporting = packed._onnx_exporting()
    assert exporting() is False or exporting() == torch.onnx.is_in_onnx_export()
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    monkeypatch.setattr(GLOBALS, "in_onnx_export", True)
    assert torch.onnx.is_in_onnx_export() and exporting()
    with torch.no_grad():  # mid-export, even a safe-looking call takes F.linear
        assert not packed._usable(torch.randn(2, 8), torch.randn(4, 8))


def test_repacks_after_the_tensor_behind_the_weight_is_replaced():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with torch.no_grad():
        packed.linear(x, layer.weight, layer.bias)
        layer.weight.data = torch.randn(4, 8)  # same Parameter object, same version counter
        torch.testing.assert_close(packed.linear(x, layer.weight, layer.bias), F.linear(x, layer.weight, layer.bias),
                                   atol=1e-5, rtol=1e-5)


def test_an_entry_remembers_a_bounded_number_of_input_shapes(monkeypatch):
    monkeypatch.setattr(packed, "MAX_SHAPES", 3)
    weight = torch.randn(16, 8)
    with torch.no_grad():
        for rows in range(1, 8):  # an LM head scoring batches of every length
            x = torch.randn(rows, 8)
            torch.testing.assert_close(packed.linear(x, weight), F.linear(x, weight), atol=1e-5, rtol=1e-5)
            assert 1 <= len(packed._ENTRIES[id(weight)].choices) <= 3
