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
with ``EDH_LINEAR=packed|plain``). Packed weights are cached per weight tensor and repacked when
the weight changes: in place (its version counter: an optimizer step, ``load_state_dict``) or behind
the tensor (``weight.data = ...``, ``module.to(dtype)``), so a model trained further, then asked to
generate again, never decodes with stale weights. ``$EDH_LINEAR`` is read when a decision is made:
set it before the first call, or call `edh.layers.dispatch.reset` after changing it.
"""

from __future__ import annotations

import functools
import weakref
from typing import Callable

import torch
import torch.nn.functional as F

from edh.layers import dispatch
from edh.utils import cpu


MAX_SHAPES = 256  # input shapes an entry remembers its kernel for (each one a dict lookup; decided per shape class)


class _Entry:
    """What `linear` keeps per weight: its packed copy and the kernel chosen per input shape. One dict
    lookup per call finds it: a decoding step calls `linear` about twenty times, and the per-call
    Python of an earlier version (checks, a shape-class tuple, the environment) cost a tenth of a
    greedy step of ``bench/translation.py``.

    The weight's state (version counter, storage address, dtype, shape) is checked at every call: an
    in-place change (optimizer step, ``load_state_dict``) repacks; ``weight.data = ...`` or
    ``module.to(dtype)``, which keep the tensor object and its version, also decide again; so does a
    `dispatch.reset`.
    """

    __slots__ = ("ref", "state", "packed", "choices")

    def __init__(self, weight: torch.Tensor) -> None:
        self.ref = weakref.ref(weight, functools.partial(_forget, id(weight)))
        self.state: tuple = ()
        self.packed: torch.Tensor | None = None
        self.choices: dict[tuple, str] = {}  # (input shape, has a bias) -> kernel

    def kernel(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
        state = (weight._version, weight.data_ptr(), weight.dtype, weight.shape, dispatch.epoch())
        if state != self.state:
            if state[1:] != self.state[1:]:  # another tensor behind the weight, or a dispatch reset
                self.choices.clear()
            self.state, self.packed = state, None  # packed again at the next packed call
        key = (x.shape, bias is not None)
        choice = self.choices.get(key)
        if choice is None:
            if len(self.choices) >= MAX_SHAPES:  # an LM head scoring batches of every length: stay bounded
                self.choices.clear()
            choice = self.choices[key] = dispatch.choose(
                "linear", shape_class(x, weight, bias),
                {"packed": lambda: _packed_linear(x, self.packed_weight(weight), bias),
                 "plain": lambda: F.linear(x, weight, bias)})
        return choice

    def packed_weight(self, weight: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            with torch.inference_mode():
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        return self.packed


_ENTRIES: dict[int, _Entry] = {}  # id(weight) -> its entry, dropped when the weight is freed


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _ENTRIES.get(key)
    if entry is not None and entry.ref is ref:
        del _ENTRIES[key]


def is_packed(weight: torch.Tensor) -> bool:
    """Whether `linear` holds a packed copy of ``weight`` (it took the packed kernel for it)."""
    entry = _ENTRIES.get(id(weight))
    return entry is not None and entry.ref() is weight and entry.packed is not None


def _usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # called for every linear of every decoding step: the cheap tensor tests first, then the global state
    # (torch.compile first of those: it cannot trace is_inference(); it packs weights itself)
    return (x.is_cpu and x.dtype == weight.dtype and weight.dim() == 2 and not torch.compiler.is_compiling()
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and cpu.native_bf16()))
            and not weight.is_inference()  # made under inference_mode: no version counter to see changes by
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.jit.is_tracing() and not _onnx_exporting()() and available())


@functools.cache
def _onnx_exporting() -> Callable[[], bool]:
    """``torch.onnx.is_in_onnx_export`` without its two imports on every call (1.5 us of a few-microsecond
    check): a reader of the flags it reads, or the public function itself where this torch keeps them
    elsewhere."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        bool(GLOBALS.in_onnx_export or _flags._is_onnx_exporting)
    except (ImportError, AttributeError):
        return torch.onnx.is_in_onnx_export
    return lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


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
    entry = _ENTRIES.get(id(weight))
    if entry is None or entry.ref() is not weight:
        entry = _ENTRIES[id(weight)] = _Entry(weight)
    if entry.kernel(x, weight, bias) == "packed":
        return _packed_linear(x, entry.packed_weight(weight), bias)
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
