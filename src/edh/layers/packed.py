"""Inference-only ``F.linear`` on weights packed once for oneDNN (CPU): the decoding step's fast path.

A generation step multiplies a few rows (batch x beams: 8-32) by every weight matrix of the decoder
and by the output layer. For such skinny products PyTorch's ``F.linear`` (MKL) is slow; oneDNN with
the weight reordered once into its blocked layout is faster (``python bench/packed_linear.py``, fp32,
one thread: 8 x 256 by 256 x 768 in 37 us instead of 47 us, 8 x 256 by 256 x 8000 in 181 us instead
of 477 us; 1.2-3.0x at two threads except 8 x 1024 by 1024 x 256, 0.8x). The same ops back
``torch.compile``'s CPU freezing pass.

`linear` uses the packed weight only where it cannot change a result anyone differentiates or
traces: a CPU float32 / bfloat16 input, no autograd (``torch.no_grad`` or ``torch.inference_mode``),
no tracing or export; everywhere else it is ``F.linear``. Where it may, it still takes the packed
weight only if that measured faster for the shape class on this machine (`edh.layers.dispatch`:
on an Intel Xeon with AMX, plain ``F.linear`` won for the translation benchmark's shapes; force
with ``EDH_LINEAR=packed|plain``). Packed weights are cached per weight
tensor and repacked when the weight changes in place (its version counter: an optimizer step,
``load_state_dict``), so a model trained further, then asked to generate again, never decodes with
stale weights.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

from edh.layers import dispatch
from edh.utils import cpu

_PACKED = WeakTensorKeyDictionary()  # weight -> (its version when packed, the packed weight)


def _usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # called for every linear of every decoding step: the cheap tensor tests first, then the global state
    # (torch.compile first of those: it cannot trace is_inference(); it packs weights itself)
    return (x.is_cpu and x.dtype == weight.dtype and weight.dim() == 2 and not torch.compiler.is_compiling()
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and cpu.native_bf16()))
            and not weight.is_inference()  # made under inference_mode: no version counter to see changes by
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.onnx.is_in_onnx_export() and available())


def _packed(weight: torch.Tensor) -> torch.Tensor:
    version = weight._version
    cached = _PACKED.get(weight)
    if cached is None or cached[0] != version:
        with torch.inference_mode():
            cached = (version, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
        _PACKED[weight] = cached
    return cached[1]


def _packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, _packed(weight), bias, "none", [], "")


def shape_class(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """What the packed-or-plain decision depends on: dtype, rows (rounded up to a power of two), the
    weight's ``(out, in)`` and whether there is a bias."""
    return (_DTYPE_NAMES.get(x.dtype) or str(x.dtype).removeprefix("torch."),
            dispatch.rows_bucket(x.numel() // max(1, x.shape[-1])), *weight.shape, bias is not None)


_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through a cached oneDNN-packed weight where that is safe (see module
    doc) and, for this shape class on this machine, faster (`edh.layers.dispatch`, ``$EDH_LINEAR``)."""
    if not _usable(x, weight):
        return F.linear(x, weight, bias)
    choice = dispatch.choose("linear", shape_class(x, weight, bias),
                             {"packed": lambda: _packed_linear(x, weight, bias),
                              "plain": lambda: F.linear(x, weight, bias)})
    if choice == "packed":
        return _packed_linear(x, weight, bias)
    return F.linear(x, weight, bias)


@functools.cache
def available() -> bool:
    """True when this PyTorch build has the oneDNN linear ops and they agree with ``F.linear`` (checked
    once, at the first decoding step rather than at import)."""
    try:
        x, weight, bias = torch.ones(2, 4), torch.eye(3, 4), torch.zeros(3)
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
            out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return torch.backends.mkldnn.is_available() and torch.equal(out, F.linear(x, weight, bias))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
