"""Inference speed options for any edh `Model` (or any ``nn.Module``).

- `fold_batchnorm`: fuse every ``Conv -> BatchNorm`` pair into one conv (eval only).
- `prepare_for_inference`: eval mode, BatchNorm folded, channels_last weights.
- `InferenceModel`: a prepared model called like the original (inputs made channels_last, optional
  bf16 autocast and ``torch.compile`` with freezing); what ``edh predict / eval --fast --bf16
  --compile`` run.
- `to_channels_last`: convert an image batch ``(B, C, H, W)`` to channels_last.
- `autocast`: bfloat16 autocast, or nothing.
- `maybe_compile`: ``torch.compile`` that falls back to eager, with a logged warning, when
  compiling fails (at ``torch.compile`` or at the first call).

Example:
    >>> fast = prepare_for_inference(model)
    >>> with torch.inference_mode(), autocast("cpu"):
    ...     outputs = fast(to_channels_last(images))
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edh.utils import cpu
from edh.utils.fusion import LeafTracer, fuse_conv_relu

log = logging.getLogger(__name__)

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d),
          (nn.ConvTranspose1d, nn.BatchNorm1d), (nn.ConvTranspose2d, nn.BatchNorm2d),
          (nn.ConvTranspose3d, nn.BatchNorm3d))


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """True when ``norm`` (eval) can be folded into ``conv``: matching dims, running stats kept."""
    return (any(type(conv) is c and type(norm) is n for c, n in _PAIRS)
            and norm.track_running_stats and norm.running_mean is not None
            and norm.num_features == conv.out_channels)


def _sequential_pairs(seq: nn.Sequential) -> list[tuple[str, str]]:
    names = list(seq._modules)
    return [(a, b) for a, b in zip(names, names[1:]) if _foldable(seq._modules[a], seq._modules[b])]


def _traced_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """``(conv, norm)`` child paths where ``forward`` feeds the conv's output only into the norm.

    Found by tracing ``module.forward`` with torch.fx (children as leaves); a module that does not
    trace (data-dependent control flow, unusual signatures) gives no pairs and is left alone.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = LeafTracer().trace(module)
    except Exception:  # noqa: BLE001 - any tracing failure means "do not touch"
        return []
    uses: dict[str, int] = {}  # child path -> how many nodes touch it (calls, attribute reads)
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            parts = str(node.target).split(".")
            for i in range(1, len(parts) + 1):
                uses[".".join(parts[:i])] = uses.get(".".join(parts[:i]), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        conv_node = node.args[0]
        if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module" and len(conv_node.users) == 1):
            continue
        conv_path, norm_path = str(conv_node.target), str(node.target)
        if uses.get(conv_path) != 1 or uses.get(norm_path) != 1:
            continue
        if _foldable(module.get_submodule(conv_path), module.get_submodule(norm_path)):
            pairs.append((conv_path, norm_path))
    return pairs


def _set_child(root: nn.Module, path: str, child: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, child)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode with every ``Conv -> BatchNorm`` pair fused into one conv.

    A pair (a conv or transposed conv, then BatchNorm) is folded where the BatchNorm directly follows
    the conv: adjacent in an ``nn.Sequential`` (e.g. `edh.layers.conv.ConvNormAct`, a ResNet
    ``downsample``, a ``conv_transpose`` decoder block), or, in any other module, where
    ``forward`` passes the conv's output straight and only to the BatchNorm (``bn1(conv1(x))`` in a
    ResNet block), as torch.fx finds by tracing that module's own ``forward``. The conv gets the
    folded weight and bias; the BatchNorm becomes ``nn.Identity``. Modules whose ``forward`` does
    not trace, and modules used at more than one place, are left unchanged. Outputs match the
    unfolded model in eval mode up to float rounding.

    Args:
        module: any model; it is not changed.

    Returns:
        The folded copy, in eval mode (do not train it: BatchNorm statistics are gone).
    """
    folded = copy.deepcopy(module).eval()
    places: dict[int, int] = {}
    for _, sub in folded.named_modules(remove_duplicate=False):
        places[id(sub)] = places.get(id(sub), 0) + 1
    for sub in list(folded.modules()):
        if type(sub).forward is nn.Sequential.forward:
            pairs = _sequential_pairs(sub)
        elif any(isinstance(child, nn.modules.batchnorm._BatchNorm) for child in sub.children()):
            pairs = _traced_pairs(sub)
        else:
            continue
        for conv_path, norm_path in pairs:
            conv, norm = sub.get_submodule(conv_path), sub.get_submodule(norm_path)
            if places[id(conv)] != 1 or places[id(norm)] != 1:
                continue
            transpose = isinstance(conv, nn.modules.conv._ConvTransposeNd)
            _set_child(sub, conv_path, fuse_conv_bn_eval(conv, norm, transpose=transpose))
            _set_child(sub, norm_path, nn.Identity())
    return folded


def to_channels_last(x: Any) -> Any:
    """An image batch ``(B, C, H, W)`` in channels_last memory format; anything else unchanged."""
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_for_inference(model: nn.Module, channels_last: bool = True, fold_bn: bool = True,
                          dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` set up for fast inference; ``model`` itself is not changed.

    Args:
        model: any model (an edh `Model` or a plain ``nn.Module``).
        channels_last: store 4-D weights channels_last. Give inputs in the same format
            (`to_channels_last`), or every conv converts its input on each call.
        fold_bn: fuse BatchNorm into the preceding conv (`fold_batchnorm`), before any ``dtype`` cast.
        dtype: store floating weights in this dtype. ``torch.bfloat16`` together with `autocast`
            spares autocast re-casting every weight on each call (fp32 inputs still work).

    Returns:
        The prepared copy, in eval mode.
    """
    prepared = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    if dtype is not None:
        prepared = prepared.to(dtype=dtype)
    return prepared


def autocast(device_type: str = "cpu", enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device_type`` when ``enabled``, else a context that does nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def to_float32(value: Any) -> Any:
    """``value`` with every bfloat16 / float16 tensor in it (dicts, lists, tuples) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, dict):
        return type(value)((k, to_float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(to_float32(v) for v in value)
    return value


_LOW_PRECISION_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                         nn.Linear)


class InferenceModel(nn.Module):
    """A model prepared for inference (`prepare_for_inference`: channels_last, BatchNorm folded; with
    ``bf16`` in eager mode each Conv2d -> ReLU also runs as one oneDNN convolution, `edh.utils.fusion`)
    that is called like the original: it converts image inputs to channels_last itself.

    Args:
        model: the model (not changed).
        bf16: run under bfloat16 autocast, with the conv and linear weights stored in bfloat16 (autocast
            would cast them on every call) and image batches converted to bfloat16 on the way in
            (one copy with the channels_last conversion); normalisation layers and buffers stay
            float32. Outputs come back as float32.
        compile: run through ``torch.compile`` with inductor's freezing pass (weights become
            constants, convolutions get oneDNN's fused post-ops), falling back to eager with a
            warning if compiling fails (`maybe_compile`). The first call compiles (seconds).

    Attributes the wrapper lacks (``heads``, ``head_specs``, ``remove_heads``...) are the prepared
    model's.
    """

    def __init__(self, model: nn.Module, bf16: bool = False, compile: bool = False) -> None:
        super().__init__()
        self.model = prepare_for_inference(model)
        self.bf16 = bf16
        if bf16:
            for layer in self.model.modules():
                if isinstance(layer, _LOW_PRECISION_LAYERS):
                    layer.to(torch.bfloat16)
        if bf16:
            cpu.warn_if_bf16_is_emulated()
        if bf16 and not compile and cpu.native_bf16():  # fp32 measured slower fused (0.86-0.97x); inductor's
            fuse_conv_relu(self.model)  # freezing fuses itself; without bf16 kernels the fused op does not run
        runner = maybe_compile(self.model, enabled=compile, options={"freezing": True})
        object.__setattr__(self, "_runner", runner)  # not a submodule: its weights are self.model's

    @property
    def compiled(self) -> bool:
        """Whether calls go through ``torch.compile`` (False: not asked, or it fell back to eager)."""
        return getattr(self._runner, "compiled", False)

    def forward(self, x: Any, **kwargs: Any) -> Any:
        if not self.bf16:
            return self._runner(to_channels_last(x), **kwargs)
        if isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point():
            x = x.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        device = x.device.type if isinstance(x, torch.Tensor) else "cpu"
        with autocast(device):
            return to_float32(self._runner(x, **kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")  # absent while unpickling / copying
            if model is None:
                raise
            return getattr(model, name)


class CompiledOrEager(nn.Module):
    """Runs a compiled ``module``; on a compile failure, logs it and runs eager from then on.

    Errors in ``torch.compile`` often surface only at the first call (missing C++ compiler,
    unsupported op). When the compiled call raises, the same inputs are retried eagerly: if eager
    succeeds, the compiled version is dropped for good; if eager raises too, the error belongs to
    the inputs and is re-raised with the compiled version kept.

    Attributes:
        module: the eager module (its state dict keys gain a ``module.`` prefix).
        compiled: whether the compiled version is still in use.
    """

    def __init__(self, module: nn.Module, compiled: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: its weights are module's

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.module(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compile-path failure falls back
            outputs = self.module(*args, **kwargs)  # raises if the inputs are at fault
            log.warning("torch.compile failed at call (%s: %s); running %s eagerly from now on",
                        type(error).__name__, error, type(self.module).__name__)
            object.__setattr__(self, "_compiled", None)
            return outputs


def maybe_compile(module: nn.Module, enabled: bool = True, **compile_options: Any) -> nn.Module:
    """``torch.compile(module)`` with an eager fallback; ``module`` itself when not ``enabled``.

    Args:
        module: the model to compile.
        enabled: compile at all.
        **compile_options: passed to ``torch.compile`` (``mode``, ``dynamic``, ``backend``...).

    Returns:
        ``module`` (disabled, or ``torch.compile`` raised: a warning is logged), or a
        `CompiledOrEager` that falls back to eager if the first compiled calls fail.
    """
    if not enabled:
        return module
    try:
        compiled = torch.compile(module, **compile_options)
    except Exception as error:  # noqa: BLE001
        log.warning("torch.compile failed (%s: %s); running %s eagerly", type(error).__name__, error,
                    type(module).__name__)
        return module
    return CompiledOrEager(module, compiled)
