"""What this CPU runs natively: bfloat16 kernels are not everywhere.

oneDNN's bfloat16 convolutions and packed linears need AVX-512 (BW, VL, DQ), AVX-NE-CONVERT or AMX. On
an AVX2-only CPU (AMD EPYC Zen 2 / Zen 3, most laptops before 2023) those ops raise, and PyTorch's own
bfloat16 kernels emulate the type: on a 2-core AMD EPYC with AVX2 (2026-12-04) edh's ``--bf16`` ResNet-18
forward ran at 0.18x of ``--fast`` float32, and every peer's bf16 3.8-5.2x slower than its float32
(``python bench/classification.py --archs resnet18``). So the fused and packed bf16 paths
(`edh.utils.fusion`, `edh.layers.packed`) ask `native_bf16` first, and ``--bf16`` warns there
(`warn_if_bf16_is_emulated`) rather than fail or run slowly without a word.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger("edh")


@functools.cache
def native_bf16() -> bool:
    """True when oneDNN has bfloat16 kernels for this CPU (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def capability() -> str:
    """The vector instruction set PyTorch dispatches to here (``AVX2``, ``AVX512``, ``DEFAULT``...)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "unknown"


@functools.cache
def warn_if_bf16_is_emulated(option: str = "--bf16") -> bool:
    """Log one warning per process (and ``option``, what asked for bf16) when bfloat16 has no native
    kernels here; True when it warned."""
    if native_bf16():
        return False
    log.warning("%s: this CPU (%s) has no bfloat16 instructions (oneDNN needs AVX-512, AVX-NE-CONVERT or AMX), "
                "so bfloat16 is emulated and runs several times slower than float32; leave out %s on this "
                "machine", option, capability(), option)
    return True
