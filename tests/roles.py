"""The shared role tester: every registered encoder, decoder and head is checked the same way.

A component that needs options to stay tiny (or to be buildable at all) lists them in ``TINY``.
"""

from __future__ import annotations

from typing import Any

import torch

from edh.core import registry
from edh.core.features import FeatureSpec, Sequence

TINY: dict[tuple[str, str], dict[str, Any]] = {
    ("encoder", "conv"): {"channels": [4, 8]},
    ("encoder", "timm"): {"model_name": "test_resnet"},
    ("encoder", "transformer"): {"vocab_size": 50, "preset": "tiny"},
}
SKIP = {("encoder", "resnet101")}  # same code as resnet50, only deeper: too slow to repeat here


def tiny_options(role: str, name: str) -> dict[str, Any]:
    return dict(TINY.get((role, name), {}))


def registered(role: str) -> list[str]:
    return [n for n in registry.names(role) if (role, n) not in SKIP]


def check_matches_spec(spec: FeatureSpec, output: Any, input_size: tuple[int, ...]) -> None:
    """The real output has exactly the kinds, channels and strides the spec promised."""
    if spec.kind == "pyramid":
        assert isinstance(output, (list, tuple)) and len(output) == spec.num_levels
        for level, (tensor, channels, stride) in enumerate(zip(output, spec.channels, spec.strides)):
            expected = (channels, -(-input_size[0] // stride), -(-input_size[1] // stride))
            assert tuple(tensor.shape[1:]) == expected, f"level {level}: {tuple(tensor.shape)} vs {expected}"
    elif spec.kind == "sequence":
        assert isinstance(output, Sequence) and output.features.shape[-1] == spec.width
    else:
        assert output.ndim == 2 and output.shape[-1] == spec.width


def flat_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flat_tensors(v)]
    return []
