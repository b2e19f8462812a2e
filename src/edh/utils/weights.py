"""Loading weights into roles: key prefixes, first-layer adaptation, and every key accounted for."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from edh.utils.io import WeightsFileError, load_tensors
from edh.utils.weight_caches import resolve_weights
from edh.utils.tensor_checks import PathProblem, check_weights_path, non_finite_problem

log = logging.getLogger("edh")

_PREFIXES = ("module.", "model.", "encoder.", "backbone.body.", "backbone.")
_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "heads.")


def check_weights_file(path: str | Path, where: str = "") -> Path:
    """``path`` when it is a readable regular weights file (looked at with ``stat`` first: never opens a
    FIFO); else ``FileNotFoundError`` (missing) or `WeightsFileError` saying what it is: a directory, a
    named pipe, an empty file, a text file. ``where`` (``encoder.weights``) starts the message.
    A cache id (``hf-hub:timm/resnet50.a1_in1k``, ``torchvision:ResNet50_Weights.IMAGENET1K_V2``) is first
    resolved to its file in the local cache (`edh.utils.weight_caches`; never downloads)."""
    path = resolve_weights(path, where)
    try:
        return check_weights_path(path, where)
    except PathProblem as problem:
        raise (FileNotFoundError if problem.missing else WeightsFileError)(problem.message) from None


def refuse_non_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """`WeightsFileError` naming the tensors that hold NaN or Inf (``source``: where they were read)."""
    problem = non_finite_problem(tensors, source)
    if problem:
        raise WeightsFileError(problem)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a pretrained ``(O, 3, k, k)`` kernel to ``in_channels`` inputs (as timm does).

    1 channel: the RGB kernels are summed. More than 3: the RGB kernels are repeated cyclically
    and scaled by ``3 / in_channels`` so the response to a uniform input keeps its size.
    """
    source = weight.shape[1]
    if in_channels == source:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // source)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (source / in_channels)


def _strip(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    if any(k in own for k in state):
        return state
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
            if any(k in own for k in stripped):
                return stripped
    return state


def load_encoder_weights(module: nn.Module, path: str | Path) -> None:
    """Load a local weight file into an encoder.

    ``path`` is a file, or a cache id resolved offline (``hf-hub:<repo id>``, ``torchvision:<weights>``;
    see `edh.utils.weight_caches`).

    Classifier keys of a full-model file (``fc.*``, ``head.*``...), and those of stages the encoder
    does not build (its ``skipped_weight_prefixes``: a ResNet of ``depth`` 3 has no layer3, layer4),
    are skipped and logged by name.
    A missing key, any other unexpected key, or a shape mismatch raises `WeightsFileError` naming the
    file and the tensors. A first convolution trained on 3 channels is adapted to ``in_channels``.
    The file itself is checked by `load_tensors`: a directory, a FIFO, a text file, an edited
    safetensors header and NaN / Inf values each get their own message.
    """
    path = check_weights_file(path)
    state = load_tensors(path)
    own = module.state_dict()
    state = _strip(state, set(own))
    # classifier keys, and the keys of stages the encoder does not build (``skipped_weight_prefixes``)
    unused = _CLASSIFIER_PREFIXES + tuple(getattr(module, "skipped_weight_prefixes", ()))
    skipped = sorted(k for k in state if k not in own and k.startswith(unused))
    state = {k: v for k, v in state.items() if k not in skipped}
    for key, value in list(state.items()):
        target = own.get(key)
        if target is not None and value.ndim == 4 and value.shape[1] != target.shape[1] \
                and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            state[key] = adapt_first_conv(value, target.shape[1])
            log.info("adapted %s of %s from %d to %d input channels", key, path, value.shape[1], target.shape[1])
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = []
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if missing:
        problems.append(f"missing from the file ({len(missing)}): " + ", ".join(missing[:20]))
    if unexpected:
        problems.append(f"not in the model ({len(unexpected)}): " + ", ".join(unexpected[:20]))
    if problems:
        raise WeightsFileError(
            f"weights in {path} do not fit {type(module).__name__}: " + " | ".join(problems)
            + ". Check that the file is for this architecture (and its in_channels)."
        )
    module.load_state_dict(state, strict=True)
    if skipped:
        log.warning("loaded %s; skipped keys this encoder does not use (classifier, stages not built): %s", path,
                    ", ".join(skipped))
