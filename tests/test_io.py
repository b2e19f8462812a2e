"""Atomic writes: a crash mid-save leaves the previous file intact."""

from __future__ import annotations

import pytest
import torch

from edh.utils.io import atomic_write, load_tensors, save_tensors


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"w": torch.ones(4)})

    def crash(handle):
        handle.write(b"partial")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert torch.equal(load_tensors(path)["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind


def test_shared_tensors_are_saved(tmp_path):
    weight = torch.randn(3, 3)
    save_tensors(tmp_path / "tied.safetensors", {"a": weight, "b": weight})
    loaded = load_tensors(tmp_path / "tied.safetensors")
    assert torch.equal(loaded["a"], loaded["b"])
