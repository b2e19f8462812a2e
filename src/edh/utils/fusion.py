"""Conv + ReLU as one oneDNN convolution for eager CPU inference (`fuse_conv_relu`, used by
`edh.utils.perf.InferenceModel` under ``--bf16``: ResNet-18 / ResNet-50 at batch 8, 224x224, 1.10x /
1.14x on an Intel Xeon with AMX; in fp32 the fused op measured 0.97x / 0.86x, so fp32 keeps two ops).

After BatchNorm folding, a ResNet's ``relu(conv(x))`` is two passes over the feature map; oneDNN's
convolution applies the ReLU as a post-op in the same pass (``torch.ops.mkldnn._convolution_pointwise``,
what inductor emits for ``--compile``). The results are identical: the same convolution, then the same
max(0, .). `ConvReLU` falls back to ``relu(conv(x))`` wherever the fused op does not apply (autograd,
tracing, ONNX export, torch.compile, other devices, dtypes other than float32 / bfloat16, bfloat16 on a CPU
without bfloat16 kernels: `edh.utils.cpu.native_bf16`).

The pairs are found as `edh.utils.perf.fold_batchnorm` finds its pairs: adjacent in an ``nn.Sequential``
(the BatchNorm folded to ``nn.Identity`` in between), or, in any other module, by tracing its own
``forward`` with torch.fx, where the conv's output goes only (through folded ``Identity`` modules) into a
ReLU. Such a module keeps its class; its ``forward`` becomes the traced graph's, without the ReLU call.
Modules that do not trace are left alone.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from edh.utils import cpu


class ConvReLU(nn.Conv2d):
    """An ``nn.Conv2d`` that returns ``relu(conv(x))``, through one oneDNN convolution with a ReLU post-op
    where that applies. A conv becomes one in place (`as_conv_relu`): same object, same parameters and
    state-dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self
        if _fusable(x, conv):
            return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, list(conv.padding),
                                                          list(conv.stride), list(conv.dilation), conv.groups,
                                                          "relu", [], "")
        return F.relu(super().forward(x))


def as_conv_relu(conv: nn.Conv2d) -> ConvReLU:
    conv.__class__ = ConvReLU
    return conv


def _fusable(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype == conv.weight.dtype
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and cpu.native_bf16()))
            and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
            and not torch.onnx.is_in_onnx_export() and torch.backends.mkldnn.is_available())


def _plain_conv(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _is_relu(module: nn.Module) -> bool:
    return type(module) is nn.ReLU


def fuse_conv_relu(model: nn.Module) -> int:
    """Fuse every Conv2d -> ReLU pair of ``model`` in place (an inference copy: see the module doc);
    returns how many pairs were fused."""
    fused = 0
    for parent in list(model.modules()):
        if type(parent).forward is nn.Sequential.forward:
            fused += _fuse_sequential(parent)
        elif parent is not model and any(_plain_conv(c) for c in parent.children()) and \
                any(_is_relu(c) for c in parent.children()):
            fused += _fuse_traced(parent)
    return fused


def _fuse_sequential(seq: nn.Sequential) -> int:
    names, fused = list(seq._modules), 0
    for index, name in enumerate(names):
        if not _plain_conv(seq._modules[name]):
            continue
        after = index + 1
        while after < len(names) and type(seq._modules[names[after]]) is nn.Identity:
            after += 1
        if after < len(names) and _is_relu(seq._modules[names[after]]):
            as_conv_relu(seq._modules[name])
            seq._modules[names[after]] = nn.Identity()
            fused += 1
    return fused


class LeafTracer(fx.Tracer):
    """Traces only a module's own ``forward``: every child is a leaf (also `edh.utils.perf.fold_batchnorm`'s)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return True


def _fuse_traced(module: nn.Module) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = LeafTracer().trace(module)
    except Exception:  # noqa: BLE001 - a module that does not trace is left alone
        return 0
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or not _is_relu(module.get_submodule(str(node.target))) or len(node.args) != 1:
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1 and \
                type(module.get_submodule(str(source.target))) is nn.Identity:
            source = source.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv_path = str(source.target)
        if "." in conv_path or not _plain_conv(module.get_submodule(conv_path)):
            continue
        if sum(1 for n in graph.nodes if n.op == "call_module" and str(n.target) == conv_path) != 1:
            continue  # the conv is called elsewhere too: leave it
        as_conv_relu(module.get_submodule(conv_path))
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
        fused += 1
    if fused:  # the module keeps its class and methods; its forward becomes the rewritten graph's
        object.__setattr__(module, "forward", fx.GraphModule(module, graph, class_name=type(module).__name__).forward)
    return fused
