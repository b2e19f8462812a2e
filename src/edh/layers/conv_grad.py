"""Training in channels_last: each conv's weight gradient in the memory format that is faster here.

channels_last makes oneDNN's convolutions faster forward and for the input gradient on every CPU we
measured, but the weight gradient of a 3x3 conv is not: on an AMD EPYC with AVX2 only, oneDNN has no
brgemm kernel for it in channels_last and its direct kernel takes 2.3x as long as the same gradient
computed from contiguous (NCHW) tensors (256 -> 256 channels, 2 x 128 x 128: 722 vs 310 ms, the
conversions 53 ms), while 1x1 convs are faster in channels_last. `install` routes each fp32
``nn.Conv2d`` of a model through `Conv2dFunction`, whose backward computes the input gradient in
channels_last and the weight / bias gradients in whichever format `edh.layers.dispatch` measured to be
faster for that conv's shape class on this machine (``$EDH_CONV_WEIGHT_GRAD=channels_last`` or
``contiguous`` forces one). The forward is ``F.conv2d`` itself, and everything outside a channels_last
fp32 training step (eval, no_grad, autocast, tracing, torch.compile, frozen weights) takes the
module's own path.

Example:
    >>> model = to_channels_last_for_training(model)  # what `edh train` does with ``train: {channels_last: true}``
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from edh.layers import dispatch

OP = "conv_weight_grad"


def _backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, conf: tuple, mask: list[bool]
              ) -> tuple[torch.Tensor | None, ...]:
    stride, padding, dilation, groups, bias_sizes = conf
    return torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, stride, padding, dilation, False,
                                               [0, 0], groups, mask)


def _weight_format(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, conf: tuple, mask: list[bool]
                   ) -> str:
    """The measured choice for this conv's shape class: where its weight / bias gradients are faster."""
    stride, padding, dilation, groups, _ = conf
    rows = x.shape[0] * grad.shape[2] * grad.shape[3]
    shape_class = (tuple(weight.shape), tuple(stride), tuple(padding), tuple(dilation), groups,
                   dispatch.rows_bucket(rows), grad.is_contiguous(memory_format=torch.channels_last))
    return dispatch.choose(OP, shape_class, {
        "channels_last": lambda: _backward(grad, x, weight, conf, mask),
        "contiguous": lambda: _backward(grad.contiguous(), x.contiguous(), weight.contiguous(), conf, mask),
    })


class Conv2dFunction(torch.autograd.Function):
    """``F.conv2d`` whose backward takes the weight gradient's memory format from `edh.layers.dispatch`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: list[int], padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, None if bias is None else [bias.shape[0]])
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        weights_mask = [False, need_weight, need_bias]
        weights_in = "channels_last" if not (need_weight or need_bias) else _weight_format(grad, x, weight, ctx.conf,
                                                                                            weights_mask)
        if weights_in == "channels_last":
            grad_x, grad_weight, grad_bias = _backward(grad, x, weight, ctx.conf, [need_x, need_weight, need_bias])
        else:  # the input gradient stays in channels_last, where it is faster
            grad_x = _backward(grad, x, weight, ctx.conf, [True, False, False])[0] if need_x else None
            _, grad_weight, grad_bias = _backward(grad.contiguous(), x.contiguous(), weight.contiguous(), ctx.conf,
                                                  weights_mask)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def _engages(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4 and weight.requires_grad
            and torch.is_grad_enabled() and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def _conv_forward(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                  ) -> torch.Tensor:
    if not _engages(x, weight):
        return nn.Conv2d._conv_forward(conv, x, weight, bias)
    return Conv2dFunction.apply(x, weight, bias, list(conv.stride), list(conv.padding), list(conv.dilation),
                                conv.groups)


def _installable(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and type(module)._conv_forward is nn.Conv2d._conv_forward
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def install(model: nn.Module) -> int:
    """Route every plain ``nn.Conv2d`` of ``model`` (zero padding given as numbers; not subclasses with a
    conv call of their own) through `Conv2dFunction`; returns how many. Idempotent; the weights, the
    state dict and the module's outputs are unchanged, and a deep copy keeps the routing."""
    count = 0
    for module in model.modules():
        if _installable(module):
            module._conv_forward = functools.partial(_conv_forward, module)
            count += 1
    return count


def installed(module: nn.Module) -> bool:
    """Whether `install` routed this conv."""
    routed = module.__dict__.get("_conv_forward")
    return isinstance(routed, functools.partial) and routed.func is _conv_forward


def to_channels_last_for_training(model: nn.Module) -> nn.Module:
    """``model`` with channels_last weights and its convs `install`-ed: how edh trains in channels_last."""
    model = model.to(memory_format=torch.channels_last)
    install(model)
    return model
