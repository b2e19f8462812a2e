"""Checks on weight files before and after they are read: what the path is, what the bytes are, what
the tensors hold.

Each returns (or raises, as `PathProblem`) what is wrong; the loaders (`edh.utils.io.load_tensors`,
`edh.utils.weights.check_weights_file`) raise it as ``FileNotFoundError`` / ``WeightsFileError``.

- `weights_path_problem`: the path is looked at with ``stat`` before anything opens it, so a
  directory, a named pipe (FIFO, which would block a reader), a socket or a device, an empty file
  and a text file (a Git LFS pointer, a saved HTML page) each get their own message.
- `sniff_weights`: what the first bytes say the file is (safetensors, a ``torch.save`` zip or
  pickle, text...), whatever its suffix.
- `safetensors_header` / `safetensors_header_problems`: a safetensors header read without loading
  the tensors, and what in it cannot be right (a dtype or shape edited so that a tensor's size no
  longer matches its byte range, an unknown dtype, a tensor past the end of the data).
- `non_finite_problem`: NaN / Inf in loaded tensors, named.
- `check_edh_version`: weights written by a newer edh (safetensors metadata ``edh_version``) log a
  warning naming both versions; they still load when every tensor fits (names and shapes are checked
  by whoever loads them).
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

log = logging.getLogger("edh")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header

# bits per element of each safetensors dtype
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
              "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


class PathProblem(ValueError):
    """What is wrong with a weights path: ``missing`` (no such file) or any other reason, in ``message``.
    It never escapes edh: the loaders raise it as ``FileNotFoundError`` (``missing``) or ``WeightsFileError``."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.message, self.missing = message, missing


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def weights_path_problem(path: str | Path, where: str = "") -> PathProblem | None:
    """What keeps ``path`` from being a readable, non-empty regular file that is not text (None: nothing).

    Never opens anything but a regular file (``stat`` first), so a FIFO cannot block. ``where``
    (``encoder.weights``) starts the message when given.
    """
    try:
        check_weights_path(path, where)
    except PathProblem as problem:
        return problem
    return None


def check_weights_path(path: str | Path, where: str = "") -> Path:
    """``path`` as a `Path` when `weights_path_problem` finds nothing; else raises the `PathProblem`."""
    path = Path(path)
    label = f"{where}: " if where else ""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise PathProblem(f"{label}weights file {path} is a symbolic link to {os.readlink(path)}, which does "
                              "not exist", missing=True) from None
        raise PathProblem(f"{label}weights file {path} does not exist", missing=True) from None
    except OSError as error:
        raise PathProblem(f"{label}cannot look at weights file {path}: {error.strerror or error}") from None
    kind = _kind(info.st_mode)
    if kind == "a directory":
        try:
            found = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)[:5]
        except OSError:
            found = []
        hint = (f"; it holds {', '.join(found)}: give one of them, e.g. {path / found[0]}" if found
                else f"; give the weights file itself ({', '.join(WEIGHT_SUFFIXES)})")
        raise PathProblem(f"{label}{path} is a directory, not a weights file{hint}")
    if kind is not None:
        raise PathProblem(f"{label}{path} is {kind}, not a regular file; edh reads weights only from regular files "
                          "(it does not open pipes, sockets or devices, which can block or never end). Save the "
                          "weights to a file and give its path")
    if info.st_size == 0:
        raise PathProblem(f"{label}weights file {path} is empty (0 bytes); was the save or the download interrupted?")
    if not os.access(path, os.R_OK):
        raise PathProblem(f"{label}weights file {path} cannot be read (permission denied)")
    if sniff_weights(path) == "text":
        raise PathProblem(f"{label}{path} is a text file, not a weights file: {_text_hint(path)}")
    return path


def _head(path: Path, count: int = 512) -> bytes:
    """The first ``count`` bytes of a regular file; opened non-blocking and checked again once open, so a
    file swapped for a FIFO after its ``stat`` cannot block."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathProblem(f"{path} is not a regular file (any more); edh reads weights only from regular files")
        return os.read(fd, count)
    finally:
        os.close(fd)


def _looks_like_text(data: bytes) -> bool:
    if not data or b"\x00" in data:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(data) - 4:  # not just a character cut at the end of the sample
            return False
        text = data[:error.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\r\n\f\v" for ch in text)


def _text_hint(path: Path) -> str:
    text = _head(path, 200).decode("utf-8", "replace")
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    if text.startswith("version https://git-lfs"):
        return ("it is a Git LFS pointer, not the file it points to; fetch the real file (git lfs pull) and "
                "give its path")
    if text.lstrip().startswith("<"):
        return (f"it starts with {first!r} (an HTML or XML page: a download that saved an error page?); "
                "download the weights again")
    return f"it starts with {first!r}. Give a .safetensors file, or a .pth / .pt file saved by torch.save"


def sniff_weights(path: str | Path) -> str:
    """What the first bytes of a regular file say it is: ``safetensors``, ``torch-zip`` (``torch.save``),
    ``pickle`` (an older ``torch.save`` or a plain pickle), ``text``, ``empty`` or ``unknown``."""
    path = Path(path)
    data = _head(path)
    if not data:
        return "empty"
    if data.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "pickle"
    if len(data) >= 9 and data[8:9] == b"{":
        length = struct.unpack("<Q", data[:8])[0]
        if 0 < length <= MAX_HEADER_BYTES:
            return "safetensors"
    if _looks_like_text(data):
        return "text"
    return "unknown"


def safetensors_header(path: str | Path) -> tuple[int, dict[str, Any]] | None:
    """``(header length, header)`` of a safetensors file, read without its tensors; None when the
    header cannot be read (too short, a length past the end of the file, not a JSON object)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return None
        length = struct.unpack("<Q", head)[0]
        if length > MAX_HEADER_BYTES or 8 + length > size:
            return None
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            return None
    return (length, header) if isinstance(header, dict) else None


def safetensors_header_problems(header: dict[str, Any], data_bytes: int) -> list[str]:
    """What cannot be right in a safetensors header whose file holds ``data_bytes`` of tensor data: an
    unknown dtype, a malformed entry, a tensor whose dtype and shape give another size than its byte
    range (a header edited after saving), a byte range past the end of the data (a truncated file)."""
    problems: list[str] = []
    cut: list[str] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            problems.append(f"tensor {name} has no dtype / shape / data_offsets entry")
            continue
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(v, int) for v in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            problems.append(f"tensor {name} has malformed data_offsets {offsets!r}")
            continue
        if offsets[1] > data_bytes:
            cut.append(f"{name} (bytes {offsets[0]}..{offsets[1]})")
        if not (isinstance(shape, list) and all(isinstance(v, int) and v >= 0 for v in shape)):
            problems.append(f"tensor {name} has malformed shape {shape!r}")
            continue
        if dtype not in DTYPE_BITS:
            problems.append(f"tensor {name} has unknown dtype {dtype!r} (safetensors dtypes: "
                            f"{', '.join(sorted(DTYPE_BITS))})")
            continue
        expected = math.prod(shape) * DTYPE_BITS[dtype] / 8
        span = offsets[1] - offsets[0]
        if expected != span:
            problems.append(
                f"tensor {name} is {dtype} of shape {tuple(shape)} ({_bytes(expected)}) but its data takes "
                f"bytes {offsets[0]}..{offsets[1]} ({span} bytes): its dtype or shape in the header was changed "
                "after saving")
    if cut:
        problems.append(f"the file holds {data_bytes} bytes of tensor data, too few for tensor " + ", ".join(cut[:5])
                        + (f" and {len(cut) - 5} more" if len(cut) > 5 else ""))
    return problems


def _bytes(count: float) -> str:
    return f"{int(count)} bytes" if float(count).is_integer() else f"{count:g} bytes"


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (``{}`` when it has none or it cannot be read)."""
    found = safetensors_header(path)
    meta = found[1].get("__metadata__") if found else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def check_edh_version(metadata: dict[str, str], path: str | Path) -> None:
    """Weights written by a newer edh: a warning naming both versions (they are loaded; the caller
    checks that every tensor's name and shape fit the model)."""
    from edh.version import __version__, version_tuple

    written = metadata.get("edh_version")
    if written and version_tuple(written) > version_tuple(__version__):
        log.warning("%s was written by edh %s, newer than the installed edh %s; loading it, since every tensor "
                    "is checked against the model, but upgrade edh (pip install -U edh) if its results look "
                    "wrong", path, written, __version__)


def non_finite_problem(tensors: dict[str, Any], source: str) -> str | None:
    """A message naming the tensors of ``tensors`` (read from ``source``) that hold NaN or Inf, or None."""
    import torch

    bad = []
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or value.is_complex()):
            continue
        if value.numel() and not bool(torch.isfinite(value).all()):
            nan = int(torch.isnan(value).sum())
            inf = int(torch.isinf(value).sum())
            counts = ", ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if part)
            bad.append(f"{name} ({counts} of {value.numel()} values)")
    if not bad:
        return None
    shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more tensors" if len(bad) > 10 else "")
    return (f"{source} holds non-finite values (NaN or Inf) in {len(bad)} tensor(s): {shown}. Such weights "
                     "give NaN outputs; they usually come from a run that diverged: use an earlier checkpoint, or "
            "retrain with a lower train.lr or a train.grad_clip")
