"""Safe, atomic file I/O: safetensors weights, weights-only torch files, YAML/JSON text.

Every write goes to a temporary file beside the target, is flushed and fsynced, then renamed over
the target, so a crash mid-save leaves the previous file intact. Nothing is ever unpickled beyond
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


class WeightsFileError(ValueError):
    """A weights file that cannot be read safely; the message names the file (and tensor)."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write ``tensors`` as safetensors (shared storage is copied, tensors made contiguous)."""
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    data = save(clean, metadata=metadata)
    return atomic_write(path, lambda f: f.write(data))


def torch_save(path: str | Path, obj: Any) -> Path:
    """Atomically ``torch.save`` an object of tensors and plain types (loadable weights-only)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with clear errors for missing, truncated or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsFileError(
            f"refusing to load {path}: it holds Python objects beyond tensors and plain types, which "
            f"could run code when unpickled ({str(error).splitlines()[0]}). Load only files you made, or "
            "convert it to .safetensors where you trust it."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise WeightsFileError(f"{path} is not a readable PyTorch file (truncated or corrupt?): {error}") from None


def _safetensors_damage(path: Path) -> str:
    """Which tensors a damaged safetensors file cannot hold, read from its header (or ``""``)."""
    import json
    import struct

    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f" (the file has only {size} bytes)"
        length = struct.unpack("<Q", head)[0]
        if 8 + length > size:
            return f" (its header claims {length} bytes but the file has {size})"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return ""
    data = size - 8 - length
    cut = [f"{name} (bytes {entry['data_offsets'][0]}..{entry['data_offsets'][1]})" for name, entry in header.items()
           if isinstance(entry, dict) and "data_offsets" in entry and entry["data_offsets"][1] > data]
    if cut:
        return f"; the file holds {data} bytes of tensor data, too few for tensor " + ", ".join(cut[:5])
    return ""


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a weights-only ``.pth``/``.pt``/``.bin`` (a ``state_dict``
    possibly nested under ``state_dict`` / ``model``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsFileError(f"{path} is not a valid safetensors file (corrupt header or truncated?): {error}"
                                   + _safetensors_damage(path)) from None
    obj = torch_load(path)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(f"{path} does not hold a state dict of tensors")
    return obj
