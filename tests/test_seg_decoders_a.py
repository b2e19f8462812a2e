"""The linknet, unetplusplus, manet, pan, pspnet and upernet decoders: smp's parameter counts, any input
size on any pyramid encoder (plain, dilated, stride-1 first level), and the build-time errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edh
from edh.core.builder import build_component
from edh.core.errors import SpecError
from edh.core.features import FeatureSpec
from edh.layers.pyramid_pooling import adaptive_avg_pool2d
from roles import TINY, check_matches_spec

DECODERS = ["linknet", "unetplusplus", "manet", "pan", "pspnet", "upernet"]
# edh decoder -> (smp architecture, the resnet34 options that give smp's default encoder, smp's head kernel)
SMP = {"linknet": ("Linknet", {}, 1), "unetplusplus": ("UnetPlusPlus", {}, 3), "manet": ("MAnet", {}, 3),
       "pan": ("PAN", {"output_stride": 16}, 3), "pspnet": ("PSPNet", {}, 3), "upernet": ("UPerNet", {}, 1)}
ENCODERS = {"plain": ("test_resnet", {}), "dilated": ("test_resnet", {"output_stride": 8}),
            "stride1": ("unet_encoder", {"base_width": 4, "depth": 4, "norm": True})}


def _segmenter(decoder: str, encoder: tuple[str, dict], head: dict | None = None, **options) -> edh.Model:
    mask = {"type": "segmentation", "source": "decoder", "num_classes": 3, **(head or {})}
    return edh.build({"encoder": {"name": encoder[0], **encoder[1]}, "decoder": {"name": decoder, **options},
                      "heads": {"mask": mask}}, pretrained=False)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cancelled_biases(module: nn.Module) -> int:
    """Parameters of smp's conv biases that a BatchNorm right after cancels (edh leaves them out)."""
    count = 0
    for parent in module.modules():
        children = list(parent.children())
        pairs = list(zip(children, children[1:]))
        if hasattr(parent, "conv") and hasattr(parent, "bn"):  # PAN's ConvBnRelu
            pairs.append((parent.conv, parent.bn))
        count += sum(conv.bias.numel() for conv, norm in pairs
                     if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.bias is not None
                     and isinstance(norm, nn.BatchNorm2d))
    return count


@pytest.mark.slow
@pytest.mark.parametrize("name", DECODERS)
def test_smp_defaults_give_smp_parameter_counts(name):
    smp = pytest.importorskip("segmentation_models_pytorch")
    arch, encoder, kernel = SMP[name]
    model = _segmenter(name, ("resnet34", encoder), head={"kernel_size": kernel}).eval()
    reference = getattr(smp, arch)("resnet34", encoder_weights=None, classes=3)
    assert _count(model.decoder) == _count(reference.decoder) - _cancelled_biases(reference.decoder)
    assert _count(model.heads["mask"]) == _count(reference.segmentation_head)  # smp's head: conv + up-sampling
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["mask"].shape == (1, 3, 64, 64)


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("name", DECODERS)
def test_any_input_size_on_any_pyramid_encoder(name, encoder):
    options = dict(TINY[("decoder", name)].options)
    if encoder == "stride1" and "decoder_channels" in options and isinstance(options["decoder_channels"], list):
        options["decoder_channels"] = options["decoder_channels"][:3]  # 3 blocks: skips at strides 4, 2, 1
    model = _segmenter(name, ENCODERS[encoder], **options).eval()
    x = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        decoded = model.decoder(model.encoder(x), input_size=(45, 70))
        check_matches_spec(model.decoder.out_spec, decoded, (45, 70))
        assert model(x)["mask"].shape == (2, 3, 45, 70)


@pytest.mark.parametrize("name", ["unetplusplus", "manet"])
def test_fewer_decoder_channels_stop_early(name):
    model = _segmenter(name, ENCODERS["plain"], decoder_channels=[16, 8]).eval()
    assert model.decoder.out_spec.strides == (8, 16) and model.decoder.out_spec.channels == (8, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 70))["mask"].shape == (1, 3, 45, 70)


def test_pspnet_reads_the_deepest_level_at_its_stride():
    assert _segmenter("pspnet", ENCODERS["plain"], out_channels=8).decoder.level == 2  # layer2, as smp's depth 3
    dilated = _segmenter("pspnet", ENCODERS["dilated"], out_channels=8).decoder
    assert dilated.level == 4 and dilated.out_spec.strides == (8,)  # layer4, dilated: the paper's PSPNet
    assert _segmenter("pspnet", ENCODERS["plain"], stride=32, out_channels=8).decoder.level == 4


@pytest.mark.parametrize("size", [(4, 6), (7, 5), (1, 1), (13, 2)])
def test_exportable_adaptive_pooling_is_torchs(size):
    x = torch.randn(2, 3, *size)
    for bins in (1, 2, 3, 6):
        torch.testing.assert_close(adaptive_avg_pool2d(x, bins), nn.functional.adaptive_avg_pool2d(x, bins))


def test_errors_name_the_key_and_the_fix():
    with pytest.raises(SpecError, match=r"decoder.stride is 16.*pick one of its strides \[2, 4, 8\]"):
        _segmenter("pspnet", ENCODERS["dilated"], stride=16)
    small = ("unet_encoder", {"base_width": 4, "depth": 3})  # strides 1, 2, 4: one level at stride >= 4
    for name in ("pan", "upernet"):
        with pytest.raises(SpecError, match=f"decoder {name} needs an encoder with at least two levels at stride 4"):
            _segmenter(name, small)
    for name in ("unetplusplus", "manet"):
        with pytest.raises(SpecError, match="decoder.decoder_channels has 6 entries.*give 1 to 5"):
            _segmenter(name, ENCODERS["plain"], decoder_channels=[8] * 6)
    with pytest.raises(SpecError, match="linknet up-samples by 2 from level to level"):
        build_component("decoder", "linknet", {}, "decoder", FeatureSpec("pyramid", (8, 16), (4, 16)))
