"""Role cases of the segmentation decoders in this family (merged into `roles.TINY`): DeepLabV3,
DeepLabV3+, SegFormer, DPT."""

from __future__ import annotations

from roles import Case  # noqa: F401

DILATED_8 = ("test_resnet", {"output_stride": 8})  # strides 2, 4, 8, 8, 8
DILATED_16 = ("test_resnet", {"output_stride": 16})  # strides 2, 4, 8, 16, 16
# a plain ViT (4 blocks, every level at stride 16), any multiple of its patch: 32x48 gives 2x3 tokens, whose
# stride-32 reassembling (1x2) is resized to 2x3, not doubled: the non-multiple path is exercised
VIT = ("timm:test_vit", {"out_indices": [0, 1, 2, 3], "options": {"dynamic_img_size": True}})
ASPP = {"decoder_channels": 8, "atrous_rates": [1, 2, 3]}  # small rates: every tap sees the 4x6 map

CASES: dict = {
    ("decoder", "deeplabv3"): Case(ASPP, encoder=DILATED_8),
    ("decoder", "deeplabv3plus"): Case({**ASPP, "skip_channels": 4}, encoder=DILATED_16),
    ("decoder", "segformer"): Case({"segmentation_channels": 8}, encoder=("test_resnet", {})),
    ("decoder", "dpt"): Case({"intermediate_channels": [8, 8, 16, 16], "fusion_channels": 8}, encoder=VIT),
}
