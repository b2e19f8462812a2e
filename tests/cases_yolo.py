"""Role cases of the YOLOv8-style components: the csp_darknet encoder, the pafpn neck and the yolo head
(merged into `roles.TINY`)."""

from __future__ import annotations

from roles import DETECTION, TEST_RESNET, Case

CSP = ("csp_darknet", {"preset": "n", "width_multiple": 0.125})  # widths 8, 16, 32, 64, 128; one bottleneck a stage

CASES: dict = {
    ("encoder", "csp_darknet"): Case(CSP[1]),
    ("decoder", "pafpn"): Case({}, encoder=TEST_RESNET),  # strides 8, 16, 32 of a ResNet: 16, 32, 64 channels
    ("head", "yolo"): Case({"num_classes": 3, "reg_max": 8}, **DETECTION),
}
