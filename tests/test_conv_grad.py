"""`edh.layers.conv_grad`: a routed conv gives nn.Conv2d's outputs and gradients with either weight-gradient
format, takes the module's own path outside a channels_last fp32 training step, decides once per shape class
(or as $EDH_CONV_WEIGHT_GRAD says), and survives a deep copy; `edh train` routes a channels_last model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edh.layers import conv_grad, dispatch

CONFIGS = [
    dict(in_channels=8, out_channels=16, kernel_size=3, padding=1),
    dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1, groups=4, bias=False),
    dict(in_channels=8, out_channels=4, kernel_size=1),
    dict(in_channels=8, out_channels=8, kernel_size=(3, 5), dilation=2, padding=(2, 4)),
]


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    monkeypatch.delenv("EDH_CONV_WEIGHT_GRAD", raising=False)
    dispatch.reset()
    yield
    dispatch.reset()


def _pair(config: dict) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(**config).to(memory_format=torch.channels_last)
    routed = copy.deepcopy(plain)
    assert conv_grad.install(routed) == 1 and conv_grad.installed(routed)
    return plain, routed


def _grads(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    y = conv(x)
    y.backward(grad)
    bias = conv.bias.grad if conv.bias is not None else torch.zeros(0)
    return y.detach(), x.grad, conv.weight.grad, bias


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("choice", ["auto", "channels_last", "contiguous"])
def test_same_outputs_and_gradients_as_conv2d(config, choice, monkeypatch):
    monkeypatch.setenv("EDH_CONV_WEIGHT_GRAD", choice)
    plain, routed = _pair(config)
    x = torch.randn(2, 8, 11, 13).to(memory_format=torch.channels_last)
    grad = torch.randn_like(plain(x))
    expected, found = _grads(plain, x, grad), _grads(routed, x, grad)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), expected, found):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name} differs with {choice}")
    ops = {op for op, _ in dispatch.decisions()}
    assert ops == ({conv_grad.OP} if choice == "auto" else set())


def test_grad_fn_only_in_a_channels_last_fp32_training_step():
    _, routed = _pair(CONFIGS[0])
    x = torch.randn(2, 8, 9, 9)
    routed_name = "Conv2dFunctionBackward"
    assert type(routed(x.to(memory_format=torch.channels_last)).grad_fn).__name__ == routed_name
    assert type(routed(x).grad_fn).__name__ != routed_name  # contiguous input: the module's own conv
    with torch.no_grad():
        assert routed(x.to(memory_format=torch.channels_last)).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = routed(x.to(memory_format=torch.channels_last))
    assert y.dtype == torch.bfloat16 and type(y.grad_fn).__name__ != routed_name
    routed.weight.requires_grad_(False)  # a frozen conv: nothing to route
    assert type(routed(x.to(memory_format=torch.channels_last).requires_grad_()).grad_fn).__name__ != routed_name


def test_frozen_input_gradient_not_computed():
    plain, routed = _pair(CONFIGS[0])
    x = torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last)  # no requires_grad: the first conv
    routed(x).sum().backward()
    plain(x).sum().backward()
    torch.testing.assert_close(routed.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-5)


def test_decides_once_per_shape_class_and_forced_by_environment(monkeypatch):
    _, routed = _pair(CONFIGS[0])
    timed = []
    real = dispatch._seconds
    monkeypatch.setattr(dispatch, "_seconds", lambda run: timed.append(run) or real(run))
    for size in (9, 9, 10):  # 2 x 81 and 2 x 100 rows: the same power-of-two bucket
        routed(torch.randn(2, 8, size, size).to(memory_format=torch.channels_last)).sum().backward()
    assert len(timed) == 2 and len(dispatch.decisions()) == 1  # both candidates, timed once
    routed(torch.randn(2, 8, 20, 20).to(memory_format=torch.channels_last)).sum().backward()
    assert len(timed) == 4 and len(dispatch.decisions()) == 2  # another bucket: measured again
    monkeypatch.setenv("EDH_CONV_WEIGHT_GRAD", "contiguous")
    routed(torch.randn(2, 8, 40, 40).to(memory_format=torch.channels_last)).sum().backward()
    assert len(timed) == 4  # forced: nothing measured
    monkeypatch.setenv("EDH_CONV_WEIGHT_GRAD", "nchw")
    with pytest.raises(ValueError, match="EDH_CONV_WEIGHT_GRAD"):
        routed(torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last)).sum().backward()


def test_install_routes_plain_convs_only_and_deep_copies_keep_it():
    class OwnConv(nn.Conv2d):
        def _conv_forward(self, x, weight, bias):
            return super()._conv_forward(x, weight, bias) * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                          nn.Conv2d(4, 4, 3, padding="same"), OwnConv(4, 4, 1), nn.ConvTranspose2d(4, 4, 2),
                          nn.Sequential(nn.Conv2d(4, 2, 1)))
    keys = list(model.state_dict())
    assert conv_grad.install(model) == 2
    assert [conv_grad.installed(m) for m in model.modules() if isinstance(m, nn.Conv2d)] == [
        True, False, False, False, True]
    assert list(model.state_dict()) == keys
    twin = copy.deepcopy(model)
    assert conv_grad.installed(twin[0]) and twin[0]._conv_forward.args[0] is twin[0]
    x = torch.randn(1, 3, 8, 8).to(memory_format=torch.channels_last)
    torch.testing.assert_close(twin(x), model(x))


def test_to_channels_last_for_training_and_edh_train_route_the_model(tmp_path):
    from conftest import tiny_run_spec
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    model = conv_grad.to_channels_last_for_training(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last) and conv_grad.installed(model[0])
    train_run(parse_run_spec(tiny_run_spec(epochs=1, channels_last=True)), tmp_path / "run")
    assert {op for op, _ in dispatch.decisions()} == {conv_grad.OP}  # its convs' backward went through here
