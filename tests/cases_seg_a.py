"""Role cases of the segmentation decoders in this family (merged into `roles.TINY`)."""

from __future__ import annotations

from roles import Case  # noqa: F401

TEST_RESNET = ("test_resnet", {})  # 3-channel images, strides 2..32, widths 8..64

CASES: dict = {
    ("decoder", "linknet"): Case({"prefinal_channels": 8}, encoder=TEST_RESNET),
    # reduction 2: smp's 16 leaves the tiny widths' channel gates one hidden unit, often a dead ReLU
    ("decoder", "manet"): Case({"decoder_channels": [16, 8, 8, 8, 8], "pab_channels": 4, "reduction": 2},
                               encoder=TEST_RESNET),
    ("decoder", "pan"): Case({"decoder_channels": 8}, encoder=TEST_RESNET),
    ("decoder", "pspnet"): Case({"out_channels": 8}, encoder=TEST_RESNET),
    ("decoder", "upernet"): Case({"decoder_channels": 8}, encoder=TEST_RESNET),
    ("decoder", "unetplusplus"): Case({"decoder_channels": [16, 8, 8, 8, 8]}, encoder=TEST_RESNET),
}
