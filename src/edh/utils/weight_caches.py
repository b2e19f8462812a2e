"""Weights named by their id in a local model cache, resolved to a file without touching the network.

An encoder's ``weights`` option takes a file path, or one of:

- ``hf-hub:<org>/<name>[@<revision>]`` (``hf-hub:timm/resnet50.a1_in1k``): the repository's
  ``model.safetensors`` in the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``), looked up as with ``HF_HUB_OFFLINE=1``. A cache that holds only a pickled
  ``pytorch_model.bin`` is refused: edh never unpickles a file the user did not produce.
- ``torchvision:<Enum>.<member>`` (``torchvision:ResNet50_Weights.IMAGENET1K_V2``): the file torchvision
  downloads for those weights, in the torch hub cache (``torch.hub.get_dir()/checkpoints/<file>``,
  ``$TORCH_HOME/hub/checkpoints`` when set). These are pickled ``.pth`` files written by torchvision; they are
  read with ``torch.load(weights_only=True)``, which rebuilds tensors only.

A file that is not in the cache is a ``FileNotFoundError`` naming the file to place, where, and the command
that fetches it on a machine with a network. Nothing here downloads.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from edh.core.errors import SpecError
from edh.utils.io import WeightsFileError

HF_PREFIX = "hf-hub:"
TORCHVISION_PREFIX = "torchvision:"
HF_FILE = "model.safetensors"
_HF_PICKLED = ("pytorch_model.bin", "open_clip_pytorch_model.bin", "pytorch_model.pth")


def resolve_weights(weights: str | Path, where: str = "") -> Path:
    """The local file that ``weights`` names: a path as given, or a cache id resolved offline.

    Args:
        weights: a file path, ``hf-hub:<repo id>[@<revision>]`` or ``torchvision:<Enum>.<member>``.
        where: the option's key path (``encoder.weights``), starting any message.

    Raises ``FileNotFoundError`` when the cache lacks the file (saying what to place where, and how to get
    it), `WeightsFileError` for a cache entry edh will not read (a pickled ``.bin``), `SpecError` for a
    malformed id.
    """
    if isinstance(weights, str) and weights.startswith(HF_PREFIX):
        return hf_hub_file(weights[len(HF_PREFIX):], where)
    if isinstance(weights, str) and weights.startswith(TORCHVISION_PREFIX):
        return torchvision_file(weights[len(TORCHVISION_PREFIX):], where)
    return Path(weights)


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, ``HF_HOME``,
    ``XDG_CACHE_HOME``), as ``huggingface_hub`` does when it starts."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "huggingface" / "hub"


def hf_hub_file(repo: str, where: str = "") -> Path:
    """``model.safetensors`` of Hugging Face repository ``repo`` (``timm/resnet50.a1_in1k``, optionally
    ``@<revision>``) from the local cache; never downloads."""
    label = f"{where}: " if where else ""
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SpecError(f"{label}{HF_PREFIX}{repo} is not a Hugging Face model id; write "
                        f"{HF_PREFIX}<org>/<name>, e.g. {HF_PREFIX}timm/resnet50.a1_in1k")
    from huggingface_hub import try_to_load_from_cache

    cache = hf_hub_cache_dir()
    rev = revision or None

    def cached(filename: str) -> Path | None:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=rev)
        return Path(found) if isinstance(found, str) else None

    path = cached(HF_FILE)
    if path is not None:
        return path
    pickled = next((p for p in map(cached, _HF_PICKLED) if p is not None), None)
    if pickled is not None:
        raise WeightsFileError(
            f"{label}the Hugging Face cache holds {repo_id} only as {pickled} (pickled, which can run code when "
            f"loaded; edh does not unpickle files it did not produce) and no {HF_FILE}. Download the "
            f"safetensors file (hf download {repo_id} {HF_FILE}) or convert the .bin yourself where "
            "you trust it, and give the .safetensors file's path as weights"
        )
    folder = f"models--{repo_id.replace('/', '--')}"
    target = cache / folder / "snapshots" / "<commit>" / HF_FILE
    revision_flag = f" --revision {revision}" if revision else ""
    raise FileNotFoundError(
        f"{label}{HF_PREFIX}{repo}: {HF_FILE} of {repo_id} is not in the local Hugging Face cache {cache} "
        f"(looked for {target}; edh never downloads). On a machine with a network run "
        f"`hf download {repo_id} {HF_FILE}{revision_flag}` (huggingface_hub's command line; "
        "`huggingface-cli download` before its version 1.0) and copy its cache folder "
        f"{cache.name}/{folder} into {cache} here (or set HF_HUB_CACHE / HF_HOME to where you put it); "
        f"or download the file anywhere (`hf download {repo_id} {HF_FILE} --local-dir DIR`) and give "
        f"DIR/{HF_FILE} as weights"
    )


def torchvision_file(name: str, where: str = "") -> Path:
    """The torch hub checkpoint file of torchvision weights ``name`` (``ResNet50_Weights.IMAGENET1K_V2``);
    never downloads."""
    import torch
    from torchvision.models import get_weight

    label = f"{where}: " if where else ""
    try:
        enum = get_weight(name)
    except (ValueError, KeyError, AttributeError) as error:
        raise SpecError(f"{label}{TORCHVISION_PREFIX}{name} names no torchvision weights ({error}); write "
                        f"{TORCHVISION_PREFIX}<Enum>.<member>, e.g. "
                        f"{TORCHVISION_PREFIX}ResNet50_Weights.IMAGENET1K_V2 "
                        "(`python -c \"import torchvision; print(torchvision.models.list_models())\"` lists the "
                        "models; each one's page lists its weights)") from None
    file_name = os.path.basename(urlparse(enum.url).path)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / file_name
    if path.exists():
        return path
    raise FileNotFoundError(
        f"{label}{TORCHVISION_PREFIX}{name}: {path} does not exist (the torch hub checkpoint cache; edh never "
        f"downloads). On a machine with a network run `python -c \"from torchvision.models import get_weight; "
        f"get_weight('{name}').get_state_dict()\"` (it saves {file_name} under ~/.cache/torch/hub/checkpoints "
        f"there), or `curl -L -o {file_name} {enum.url}`, and copy {file_name} to {folder} here (or set "
        "TORCH_HOME to the folder above hub/checkpoints); or give the file's own path as weights"
    )
