"""Head types renamed between releases: old run specs keep loading under the new name (core/spec.py
`edh.core.spec_migrations.RENAMED_HEADS`), and a current spec is read as written."""

from __future__ import annotations

import logging

from edh.core.spec import parse_run_spec

OLD = {"model": {"encoder": {"name": "resnet18"}, "decoder": {"name": "fpn", "out_channels": 16},
                 "heads": {"objects": {"type": "yolo", "source": "decoder", "num_classes": 2, "num_convs": 1}}},
       "data": {"name": "scenes"}}


def test_a_spec_written_before_0_2_reads_yolo_as_fcos(caplog):
    with caplog.at_level(logging.WARNING, logger="edh"):
        spec = parse_run_spec({**OLD, "edh_version": "0.1.0"})
    assert spec.model.heads["objects"].type == "fcos"
    assert spec.model.heads["objects"].options()["num_convs"] == 1
    assert any("read as type 'fcos'" in r.getMessage() for r in caplog.records)


def test_a_current_spec_keeps_its_head_type(caplog):
    with caplog.at_level(logging.WARNING, logger="edh"):
        spec = parse_run_spec({**OLD, "edh_version": "0.2.0"})
        unversioned = parse_run_spec(OLD)
    assert spec.model.heads["objects"].type == "yolo" == unversioned.model.heads["objects"].type
    assert not [r for r in caplog.records if "read as type" in r.getMessage()]
    assert OLD["model"]["heads"]["objects"]["type"] == "yolo"  # the caller's mapping is not changed
