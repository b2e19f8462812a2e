"""Dilated encoders (``output_stride``) and the DeepLab, SegFormer and DPT decoders.

The encoders are checked against torchvision and timm (same weights, same outputs); each decoder's
parameter count against segmentation_models_pytorch's (smp) on resnet34 (or a tiny timm ViT), so
a user switching from smp gets the same model.
"""

from __future__ import annotations

import pytest
import torch

from edh.core.builder import build_component
from edh.core.errors import SpecError


def encoder(name: str, **options):
    return build_component("encoder", name, options, "encoder").eval()


# ---- dilated encoders --------------------------------------------------------------------------------
@pytest.mark.parametrize("output_stride, strides", [(32, (2, 4, 8, 16, 32)), (16, (2, 4, 8, 16, 16)),
                                                    (8, (2, 4, 8, 8, 8))])
def test_a_dilated_resnet_states_its_strides(output_stride, strides):
    model = encoder("test_resnet", output_stride=output_stride)
    assert model.out_spec.strides == strides
    outputs = model(torch.randn(1, 3, 33, 50))
    assert [tuple(o.shape[-2:]) for o in outputs] == [(-(-33 // s), -(-50 // s)) for s in strides]


def test_a_torchvision_bottleneck_resnet_dilates_as_torchvision():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.feature_extraction import create_feature_extractor

    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    reference = create_feature_extractor(reference, ["relu", "layer1", "layer2", "layer3", "layer4"])
    model = encoder("resnet50", output_stride=8)
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(model(x), reference(x).values()):
            torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_a_basic_block_resnet_dilates_as_timm(output_stride):
    """torchvision refuses to dilate BasicBlock; timm does, with the same weights: edh matches it."""
    timm = pytest.importorskip("timm")
    reference = timm.create_model("resnet18", features_only=True, output_stride=output_stride).eval()
    model = encoder("resnet18", output_stride=output_stride)
    assert model.out_spec.strides == tuple(reference.feature_info.reduction())
    reference.load_state_dict(model.state_dict())  # the same keys and shapes as the undilated resnet18
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        for ours, theirs in zip(model(x), reference(x)):
            torch.testing.assert_close(ours, theirs)


def test_torchvision_weights_load_into_a_dilated_resnet_and_output_stride_32_is_unchanged(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from edh.utils.io import save_tensors

    reference = torchvision.models.resnet18().eval()
    path = save_tensors(tmp_path / "resnet18.safetensors", reference.state_dict())
    dilated = encoder("resnet18", output_stride=8, weights=str(path))
    plain = encoder("resnet18", weights=str(path))
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(dilated.state_dict()[key], value)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        deepest = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        torch.testing.assert_close(plain(x)[-1], deepest)
        assert dilated(x)[-1].shape[-2:] == (8, 8)


def test_a_shallow_resnet_builds_and_returns_only_its_levels_and_loads_full_weights(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from edh.utils.io import save_tensors

    reference = torchvision.models.resnet18().eval()
    path = save_tensors(tmp_path / "resnet18.safetensors", reference.state_dict())
    shallow = encoder("resnet18", depth=3, weights=str(path))  # smp's PSPNet encoder_depth
    assert shallow.out_spec.strides == (2, 4, 8) and not hasattr(shallow, "layer3")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.layer2(reference.layer1(reference.maxpool(reference.relu(reference.bn1(
            reference.conv1(x))))))
        levels = shallow(x)
    assert len(levels) == 3
    torch.testing.assert_close(levels[-1], expected)
    with pytest.raises(SpecError, match=r"encoder\.depth"):
        encoder("resnet18", depth=6)


@pytest.mark.parametrize("value", [4, 12, 64])
def test_an_invalid_output_stride_is_a_spec_error(value):
    with pytest.raises(SpecError, match=r"encoder\.output_stride"):
        encoder("resnet18", output_stride=value)
    with pytest.raises(ValueError, match="must be 8, 16 or 32"):
        from edh.encoders.resnet import BasicBlock, ResNetEncoder
        ResNetEncoder(BasicBlock, [1, 1, 1, 1], width=8, output_stride=value)


@pytest.mark.parametrize("output_stride, deepest", [(8, 8), (16, 16)])
def test_a_timm_encoder_dilates_with_output_stride(output_stride, deepest):
    model = encoder("timm:test_resnet", output_stride=output_stride)
    assert model.out_spec.strides[-1] == deepest
    outputs = model(torch.randn(1, 3, 32, 48))
    assert outputs[-1].shape[-2:] == (32 // deepest, 48 // deepest)
    shallow = encoder("timm:test_resnet", output_stride=output_stride, out_indices=[0, 1, 2])  # stops at stride 8
    assert shallow.out_spec.strides == (2, 4, 8)


def test_a_timm_model_that_cannot_dilate_is_named():
    with pytest.raises(ValueError, match="'test_vit' cannot change its output stride"):
        encoder("timm:test_vit", output_stride=8)


# ---- decoders: against smp, any input size, refusals -------------------------------------------------
def segmenter(encoder_spec: dict, decoder_spec: dict):
    import edh

    return edh.build({"encoder": encoder_spec, "decoder": decoder_spec,
                      "heads": {"mask": {"type": "segmentation", "source": "decoder", "num_classes": 3}}}).eval()


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


SMP_RESNET34 = [  # edh decoder, edh encoder output stride (smp's default), smp architecture
    ("deeplabv3", 8, "DeepLabV3"),
    ("deeplabv3plus", 16, "DeepLabV3Plus"),
    ("segformer", 32, "Segformer"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, output_stride, arch", SMP_RESNET34)
def test_a_decoder_has_smps_parameters_on_resnet34(name, output_stride, arch):
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = getattr(smp, arch)("resnet34", encoder_weights=None, classes=3)
    model = segmenter({"name": "resnet34", "output_stride": output_stride}, {"name": name})
    assert count(model.decoder) == count(reference.decoder)
    assert count(model.encoder) == count(reference.encoder)
    assert count(model.heads) == count(reference.segmentation_head)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["mask"].shape == (1, 3, 64, 64)


# a tiny timm ViT at 64x64 (4x4 tokens), four blocks spread over its 12 as smp's DPT samples them
VIT_TINY = {"name": "timm:vit_tiny_patch16_224", "out_indices": [2, 5, 8, 11], "options": {"img_size": 64}}


@pytest.mark.slow
def test_dpt_and_segformer_have_smps_parameters_on_a_vit():
    """smp's DPT with ``decoder_readout="ignore"`` (edh's timm encoder returns no class token); its head's
    3x3 conv-BN is edh's ``head_conv``. smp's Segformer refuses a plain ViT: its decoder is built directly."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder

    reference = smp.DPT("tu-vit_tiny_patch16_224", encoder_weights=None, classes=3, img_size=64,
                        decoder_readout="ignore")
    model = segmenter(VIT_TINY, {"name": "dpt"})
    assert model.encoder.fixed_input_size == (64, 64)  # the ViT's img_size, not its pretrained config's 224
    assert count(model.decoder) == count(reference.decoder) + count(reference.segmentation_head.head[:2])
    assert count(model.heads) == count(reference.segmentation_head.head[4])
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["mask"].shape == (1, 3, 64, 64)
    model = segmenter(VIT_TINY, {"name": "segformer"})
    assert count(model.decoder) == count(SegformerDecoder([3, *model.encoder.out_spec.channels]))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["mask"].shape == (1, 3, 64, 64)


def randomize_statistics(module) -> None:
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)


def load_in_order(ours, theirs: list) -> None:
    """``theirs``' tensors (a reference's state, listed in our modules' order) into ``ours``, reshaped
    where a linear layer is our 1x1 conv."""
    own = ours.state_dict()
    assert len(own) == len(theirs)
    ours.load_state_dict({key: value.reshape(own[key].shape) for key, value in zip(own, theirs)})


def smp_reference(name: str, channels: tuple, smp):
    """smp's decoder of ``name`` at tiny widths, its tensors in edh's order, and how it is called."""
    from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3Decoder, DeepLabV3PlusDecoder
    from segmentation_models_pytorch.decoders.dpt.decoder import DPTDecoder, DPTSegmentationHead
    from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder

    with_input = [3, *channels]  # smp's encoders list the image itself first
    if name == "deeplabv3":
        decoder = DeepLabV3Decoder(channels[-1], 16, (1, 2, 3), aspp_separable=False, aspp_dropout=0.5)
        return decoder, list(decoder.state_dict().values()), lambda x, f: decoder([x, *f])
    if name == "deeplabv3plus":
        decoder = DeepLabV3PlusDecoder(with_input, 5, 16, (1, 2, 3), 16, aspp_separable=True, aspp_dropout=0.5)
        return decoder, list(decoder.state_dict().values()), lambda x, f: decoder([x, *f])
    if name == "segformer":  # smp's linear layers run deepest first, edh's shallowest first
        decoder = SegformerDecoder(with_input, 5, 16)
        state = decoder.state_dict()
        stages = [[v for k, v in state.items() if k.startswith(f"mlp_stage.{i}.")] for i in range(len(channels))]
        rest = [v for k, v in state.items() if k.startswith("fuse_stage.")]
        return decoder, [v for stage in stages[::-1] for v in stage] + rest, lambda x, f: decoder([x, *f])
    decoder = torch.nn.ModuleDict({"dpt": DPTDecoder(channels, (16,) * 4, False, "ignore", (8, 8, 16, 16), 16),
                                   "head": DPTSegmentationHead(16, 3).head[:4]})
    return decoder, list(decoder.state_dict().values()), lambda x, f: decoder["head"](decoder["dpt"](f, [None] * 4))


EQUIVALENT = [  # name, edh options at smp's tiny widths, encoder
    ("deeplabv3", {"decoder_channels": 16, "atrous_rates": [1, 2, 3]}, {"name": "test_resnet", "output_stride": 8}),
    ("deeplabv3plus", {"decoder_channels": 16, "atrous_rates": [1, 2, 3]},
     {"name": "test_resnet", "output_stride": 16}),
    ("segformer", {"segmentation_channels": 16}, {"name": "test_resnet"}),
    ("dpt", {"intermediate_channels": [8, 8, 16, 16], "fusion_channels": 16},
     {"name": "timm:test_vit", "out_indices": [0, 1, 2, 3]}),
]


@pytest.mark.parametrize("name, options, encoder_spec", EQUIVALENT)
def test_a_decoder_computes_what_smps_computes_with_its_weights(name, options, encoder_spec):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    spec = encoder(**encoder_spec).out_spec
    ours = build_component("decoder", name, options, "decoder", spec).eval()
    reference, state, run = smp_reference(name, spec.channels, smp)
    randomize_statistics(reference.eval())
    load_in_order(ours, state)
    size = (32, 32) if name == "dpt" else (64, 96)
    x = torch.randn(2, 3, *size)
    features = [torch.randn(2, c, -(-size[0] // s), -(-size[1] // s)) for c, s in zip(spec.channels, spec.strides)]
    with torch.no_grad():
        torch.testing.assert_close(ours(features, input_size=size)[0], run(x, features))


TINY_DECODERS = [  # name, tiny options, encoder
    ("deeplabv3", {"decoder_channels": 8}, {"name": "test_resnet", "output_stride": 8}),
    ("deeplabv3plus", {"decoder_channels": 8}, {"name": "test_resnet", "output_stride": 16}),
    ("deeplabv3plus", {"decoder_channels": 8}, {"name": "test_resnet", "output_stride": 8}),
    ("segformer", {"segmentation_channels": 8}, {"name": "test_resnet"}),
]


@pytest.mark.parametrize("name, options, encoder_spec", TINY_DECODERS)
def test_logits_have_the_input_size_of_any_size(name, options, encoder_spec):
    model = segmenter(encoder_spec, {"name": name, **options})
    with torch.no_grad():
        for size in ((37, 51), (64, 40)):
            assert model(torch.randn(2, 3, *size))["mask"].shape == (2, 3, *size)


@pytest.mark.parametrize("name, fix", [("deeplabv3", "output_stride: 8"), ("deeplabv3plus", "output_stride: 16")])
def test_deeplab_refuses_an_undilated_encoder(name, fix):
    with pytest.raises(SpecError, match=f"deepest level is at stride 8 or 16.*encoder.{fix}"):
        segmenter({"name": "test_resnet"}, {"name": name})


def test_deeplabv3plus_needs_a_stride_4_level():
    from edh.core.features import FeatureSpec

    with pytest.raises(SpecError, match="level at stride 4"):
        build_component("decoder", "deeplabv3plus", {}, "decoder", FeatureSpec("pyramid", (8, 16), (8, 16)))


def test_deeplab_refuses_no_atrous_rates():
    with pytest.raises(ValueError, match="atrous_rates"):
        segmenter({"name": "test_resnet", "output_stride": 8}, {"name": "deeplabv3", "atrous_rates": []})


def test_dpt_refuses_a_hierarchical_pyramid():
    with pytest.raises(SpecError, match="plain ViT.*hierarchical pyramid.*segformer"):
        segmenter({"name": "test_resnet"}, {"name": "dpt"})


def test_dpt_says_how_many_levels_its_defaults_need():
    with pytest.raises(SpecError, match=r"3 levels.*encoder\.out_indices"):
        segmenter({"name": "timm:test_vit"}, {"name": "dpt"})  # timm's default: the last 3 blocks


def test_dpt_crops_a_padded_vit_to_the_input():
    model = segmenter({"name": "timm:test_vit", "out_indices": [0, 1, 2, 3],
                       "options": {"dynamic_img_size": True, "dynamic_img_pad": True}},
                      {"name": "dpt", "intermediate_channels": [8, 8, 8, 8], "fusion_channels": 8})
    with torch.no_grad():
        decoded = model.decoder(model.encoder(torch.randn(1, 3, 40, 56)), input_size=(40, 56))
        assert decoded[0].shape[-2:] == (20, 28)  # 3x4 tokens would give 24x32
        assert model(torch.randn(1, 3, 40, 56))["mask"].shape == (1, 3, 40, 56)
