"""`edh describe`'s total counts each parameter once: a head's branch rows are parts of the head row."""

from __future__ import annotations

import edh
from edh.inspection.describe import describe_model


def test_the_total_of_a_head_with_branches_is_the_models_parameter_count():
    model = edh.build(encoder="resnet18", decoder={"name": "fpn", "out_channels": 16, "levels": [2, 3]},
                      heads={"det": {"type": "faster_rcnn", "source": "decoder", "num_classes": 2,
                                     "representation_size": 32}}, pretrained=False)
    description = describe_model(model, (64, 64))
    assert any(r.role.startswith(" ") for r in description.rows)  # the branch rows are shown
    assert description.total_params == sum(p.numel() for p in model.parameters())
    assert description.total_macs == sum(r.macs for r in description.rows if not r.role.startswith(" "))
