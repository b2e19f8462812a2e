"""Encoder weights named by their id in a local cache (``hf-hub:...``, ``torchvision:...``), never downloaded."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from edh.core.builder import build_component
from edh.core.errors import SpecError
from edh.utils.io import WeightsFileError, save_tensors
from edh.utils.weight_caches import resolve_weights

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESNET18_FILE = "resnet18-f37072fd.pth"  # the file name in ResNet18_Weights.IMAGENET1K_V1's url


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test: resolving a cache id must stay offline."""
    def refuse(*args, **kwargs):
        raise AssertionError("edh tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return cache


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _put_in_hf_cache(cache: Path, repo_id: str, filename: str, write, revision: str = "main") -> Path:
    """Lay a file out as ``huggingface_hub`` does: ``models--org--name/{refs/<rev>, snapshots/<commit>/file}``."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(COMMIT)
    path = folder / "snapshots" / COMMIT / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    return path


def test_resnet18_loads_from_the_torch_hub_cache(torch_home):
    reference = torchvision.models.resnet18()
    path = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)  # torchvision's files are pickled .pth, read weights_only
    encoder = build_component("encoder", "resnet18", {"weights": "torchvision:ResNet18_Weights.IMAGENET1K_V1"},
                              "encoder")
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    torch.testing.assert_close(encoder.state_dict(), expected)


def test_timm_encoder_loads_model_safetensors_from_the_hf_cache(hf_cache):
    reference = timm.create_model("test_resnet")
    _put_in_hf_cache(hf_cache, "timm/test_resnet.r160_in1k", "model.safetensors",
                     lambda p: save_tensors(p, reference.state_dict()))
    encoder = build_component("encoder", "timm:test_resnet", {"weights": "hf-hub:timm/test_resnet.r160_in1k"},
                              "encoder")
    own = encoder.model.state_dict()
    assert own and all(torch.equal(v, reference.state_dict()[k]) for k, v in own.items())


def test_resnet18_loads_a_timm_checkpoint_at_a_revision_from_the_hf_cache(hf_cache):
    reference = timm.create_model("resnet18", num_classes=0)
    _put_in_hf_cache(hf_cache, "timm/resnet18.a1_in1k", "model.safetensors",
                     lambda p: save_tensors(p, reference.state_dict()), revision="v1")
    encoder = build_component("encoder", "resnet18", {"weights": "hf-hub:timm/resnet18.a1_in1k@v1"}, "encoder")
    torch.testing.assert_close(encoder.state_dict(), reference.state_dict())


def test_hf_hub_cache_env_wins_over_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "unused"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    path = _put_in_hf_cache(tmp_path / "elsewhere", "org/model", "model.safetensors",
                            lambda p: save_tensors(p, {"w": torch.ones(1)}))
    assert resolve_weights("hf-hub:org/model") == path


def test_missing_hf_file_names_the_path_and_the_download_command(hf_cache):
    with pytest.raises(FileNotFoundError) as error:
        build_component("encoder", "timm:test_resnet", {"weights": "hf-hub:timm/absent.r160_in1k"}, "encoder")
    message = str(error.value)
    assert "encoder.weights" in message and str(hf_cache / "models--timm--absent.r160_in1k") in message
    assert "hf download timm/absent.r160_in1k model.safetensors" in message


def test_missing_torchvision_file_names_the_path_and_the_url(torch_home):
    with pytest.raises(FileNotFoundError) as error:
        build_component("encoder", "resnet18", {"weights": "torchvision:ResNet18_Weights.IMAGENET1K_V1"}, "encoder")
    message = str(error.value)
    assert str(torch_home / "hub" / "checkpoints" / RESNET18_FILE) in message
    assert f"https://download.pytorch.org/models/{RESNET18_FILE}" in message and "get_state_dict()" in message


def test_a_pickled_bin_in_the_hf_cache_is_refused(hf_cache):
    _put_in_hf_cache(hf_cache, "org/old-model", "pytorch_model.bin", lambda p: torch.save({"w": torch.ones(1)}, p))
    with pytest.raises(WeightsFileError, match="pytorch_model.bin.*does not unpickle"):
        resolve_weights("hf-hub:org/old-model", "encoder.weights")


@pytest.mark.parametrize("weights, match", [
    ("hf-hub:resnet50", "not a Hugging Face model id"),
    ("torchvision:ResNet50_Weights.NO_SUCH", "names no torchvision weights"),
    ("torchvision:NoSuchWeights.V1", "names no torchvision weights"),
])
def test_malformed_cache_ids_are_spec_errors(weights, match, hf_cache, torch_home):
    with pytest.raises(SpecError, match=match):
        build_component("encoder", "resnet18", {"weights": weights}, "encoder")


def test_plain_paths_pass_through(tmp_path):
    assert resolve_weights(str(tmp_path / "w.safetensors")) == tmp_path / "w.safetensors"
