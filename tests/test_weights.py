"""Loading torchvision / timm weights into edh roles, and refusing unsafe or broken files."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
import torchvision

import edh
from edh.core.builder import build_component
from edh.utils.io import WeightsFileError, load_tensors, save_tensors, torch_load
from edh.utils.weights import adapt_first_conv


def _from_torchvision(state: dict, head: str = "label") -> dict:
    return {(f"heads.{head}.{k}" if k.startswith("fc.") else f"encoder.{k}"): v for k, v in state.items()}


@pytest.mark.slow
def test_resnet50_matches_torchvision_count_and_logits():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(num_classes=1000).eval()
    model = edh.build(encoder="resnet50", heads={"label": {"type": "classification", "num_classes": 1000}})
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    model.load_state_dict(_from_torchvision(reference.state_dict()))
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["label"], reference(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_loads_a_torchvision_file_and_reports_classifier_keys(tmp_path, suffix, caplog):
    reference = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        save_tensors(path, reference.state_dict())
    with caplog.at_level("WARNING", logger="edh"):
        encoder = build_component("encoder", "resnet18", {"weights": str(path)}, "encoder")
    assert "fc.bias, fc.weight" in caplog.text
    torch.testing.assert_close(encoder.conv1.weight, reference.conv1.weight)


def test_encoder_loads_a_timm_file(tmp_path):
    reference = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "timm_resnet18.safetensors"
    save_tensors(path, reference.state_dict())
    encoder = build_component("encoder", "resnet18", {"weights": str(path)}, "encoder")
    torch.testing.assert_close(encoder.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_timm_encoder_loads_a_local_file(tmp_path):
    reference = timm.create_model("test_resnet")
    path = tmp_path / "test_resnet.safetensors"
    save_tensors(path, reference.state_dict())
    encoder = build_component("encoder", "timm:test_resnet", {"weights": str(path), "in_channels": 1}, "encoder")
    expected = reference.conv1[0].weight.sum(1, keepdim=True) if isinstance(reference.conv1, torch.nn.Sequential) \
        else reference.conv1.weight.sum(1, keepdim=True)
    stem = next(p for n, p in encoder.named_parameters() if p.ndim == 4)
    torch.testing.assert_close(stem, expected)


def test_first_conv_is_adapted_to_other_channel_counts(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "r18.safetensors"
    save_tensors(path, reference.state_dict())
    gray = build_component("encoder", "resnet18", {"weights": str(path), "in_channels": 1}, "encoder")
    torch.testing.assert_close(gray.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    four = build_component("encoder", "resnet18", {"weights": str(path), "in_channels": 4}, "encoder")
    assert four.conv1.weight.shape[1] == 4
    torch.testing.assert_close(four.conv1.weight[:, :3], reference.conv1.weight * 0.75)
    assert adapt_first_conv(torch.ones(2, 3, 1, 1), 1).shape == (2, 1, 1, 1)


def test_missing_and_mismatched_keys_are_named(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.bn2.weight"]
    path = tmp_path / "partial.safetensors"
    save_tensors(path, state)
    with pytest.raises(WeightsFileError, match=r"partial\.safetensors.*missing from the file \(1\): layer4\.1\.bn2\.weight"):
        build_component("encoder", "resnet18", {"weights": str(path)}, "encoder")
    path34 = tmp_path / "r34.safetensors"
    save_tensors(path34, torchvision.models.resnet50().state_dict())
    with pytest.raises(WeightsFileError, match=r"shape mismatches: conv1\.weight|layer1\.0\.conv1\.weight"):
        build_component("encoder", "resnet18", {"weights": str(path34)}, "encoder")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": _Payload(str(marker))}, handle)
    with pytest.raises(WeightsFileError, match=r"refusing to load .*evil\.pth"):
        torch_load(path)
    with pytest.raises(WeightsFileError, match="refusing to load"):
        build_component("encoder", "resnet18", {"weights": str(path)}, "encoder")
    assert not marker.exists()


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    save_tensors(good, {"a": torch.ones(3)})
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 8 + good.read_bytes()[8:])
    with pytest.raises(WeightsFileError, match=r"corrupt\.safetensors is not a valid safetensors file"):
        load_tensors(corrupt)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-4])
    with pytest.raises(WeightsFileError, match="truncated"):
        load_tensors(truncated)
    pth = tmp_path / "cut.pth"
    torch.save({"a": torch.ones(100)}, pth)
    pth.write_bytes(pth.read_bytes()[:50])
    with pytest.raises(WeightsFileError, match=r"cut\.pth is not a readable PyTorch file"):
        torch_load(pth)
