"""Safe, atomic file I/O: safetensors weights, weights-only torch files, YAML/JSON text.

Every write goes to a temporary file beside the target, is flushed and fsynced, then renamed over
the target, so a crash mid-save leaves the previous file intact; the file gets the user's umask, a
full disk is a `DiskFullError` naming the file, and the temporary files of a killed save are removed
by the next one. `FolderLock` keeps a second process from writing a folder one is writing. Nothing
is ever unpickled beyond ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from edh.core.errors import DiskFullError, RunFolderError, RunInUseError


class WeightsFileError(ValueError):
    """A weights file that cannot be read safely; the message names the file (and tensor)."""


_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]*)\.)?[a-z0-9_]{8}\.tmp$")
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _host() -> str:
    """This machine's name as it appears in temporary file names (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but no better way exists)
    os.umask(mask)
    return mask


def _writer_is_gone(pid: str | None, host: str | None, legacy: bool) -> bool:
    """Whether the process that made a temporary file is surely dead (its file can go)."""
    if pid is None:
        return legacy  # a name without its writer (older edh): only when the caller knows nobody writes
    if host != _host() or int(pid) == os.getpid():
        return False  # another machine's process (a shared folder) or this process: never touched
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def remove_stale_temp_files(folder: str | Path, name: str | None = None, legacy: bool = False) -> list[Path]:
    """Delete the temporary files (``.NAME.PID@HOST.XXXXXXXX.tmp``) that a killed save left in ``folder``:
    those of ``name`` (every target if None) whose writer, a process on this machine, is gone. With
    ``legacy``, also the ones without a writer in their name (``.NAME.XXXXXXXX.tmp``, older edh): only
    for a caller that holds the folder's lock. Returns the files deleted."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or not entry.name.endswith(".tmp"):
            continue
        match = _TEMP.match(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if _writer_is_gone(match["pid"], match["host"], legacy):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    The file gets the mode a plain ``open(path, "w")`` would give it (``0o666`` less the umask). The
    temp file is named ``.NAME.PID@HOST.XXXXXXXX.tmp``; those a killed save left are deleted by the
    next save of ``path`` (`remove_stale_temp_files`). No space left (ENOSPC, EDQUOT) raises
    `DiskFullError` naming ``path``: the temp file is removed and the previous ``path`` is as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent, path.name)
    existed = path.exists()
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_host()}.", suffix=".tmp",
                                        dir=path.parent)
        mode = 0o666 & ~current_umask()
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:  # pragma: no cover (Windows)
            os.chmod(tmp_name, mode)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS and not isinstance(error, DiskFullError):
            kept = (f"the previous {path.name} is intact" if existed else f"{path.name} was not written")
            full = DiskFullError(f"no space left on the device while saving {path} ({error.strerror}); {kept} "
                                 f"and the partial write was removed. Free some space on it (or save "
                                 f"elsewhere) and try again.")
            full.errno, full.path = error.errno, str(path)  # (strerror / filename would reword str())
            raise full from None
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


LOCK_FILE = ".edh.lock"


class FolderLock:
    """An exclusive, advisory lock on a folder: ``fcntl.flock`` on ``FOLDER/.edh.lock``.

    One process at a time holds it; the kernel releases it when the holder ends, however it ends
    (SIGKILL included), so a lock is never left stale. The file stays in the folder (removing it would
    let two processes lock two different files); while held it names the holder: PID, machine, command
    line and start time, which a refused process puts in its `RunInUseError`. Where ``fcntl`` does not
    exist (Windows) the lock does nothing.

    Args:
        folder: the folder to lock (it must exist).
        what: how the refusal names the folder ("run folder").
    """

    def __init__(self, folder: str | Path, what: str = "folder") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows)
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except PermissionError:
            try:  # an existing lock file we may not write: locking needs only a read handle
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as error:
                raise RunFolderError(f"cannot lock the {self.what} {self.folder}: {error.strerror} ({self.path}); "
                                     f"it must be writable (chmod u+w {self.folder})") from None
        except OSError as error:
            raise RunFolderError(f"cannot lock the {self.what} {self.folder}: {error.strerror} ({self.path}); "
                                 f"it must be writable (a read-only file system or folder?)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            holder = self._holder(fd)
            os.close(fd)
            pid = holder.get("pid")
            who = f"PID {pid}" if pid else "a process that has not named itself yet"
            if holder.get("host") and holder["host"] != socket.gethostname():
                who += f" on {holder['host']}"
            details = "".join(f", {key} {holder[key]}" for key in ("command", "since") if holder.get(key))
            raise RunInUseError(
                f"the {self.what} {self.folder} is in use: another process ({who}{details}) holds its lock "
                f"{self.path} and is writing it. Wait for it to finish, stop it (kill {pid or 'PID'}), or "
                "write to another folder.", pid=pid) from None
        self._fd = fd
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (info + "\n").encode(), 0)
        except OSError:
            pass  # a read-only lock file: the lock holds, it just cannot name its holder
        return self

    @staticmethod
    def _holder(fd: int) -> dict[str, Any]:
        for _ in range(20):  # the holder writes its name right after locking: give it a moment
            try:
                text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                return dict(json.loads(text))
            except (OSError, ValueError, TypeError):
                time.sleep(0.025)
        return {}

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            try:  # a later holder's refusals must not name this process
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


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
    """Which tensors a damaged safetensors file cannot hold, read from its header (or ``""``): a file
    shorter than its header, tensors past the end of the data (truncated), tensors whose dtype and
    shape do not fit their byte range (a header edited after saving), unknown dtypes."""
    import struct

    from edh.utils.tensor_checks import safetensors_header, safetensors_header_problems

    size = path.stat().st_size
    if size < 8:
        return f" (the file has only {size} bytes)"
    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
    if 8 + length > size:
        return f" (its header claims {length} bytes but the file has {size})"
    found = safetensors_header(path)
    if found is None:
        return ""
    problems = safetensors_header_problems(found[1], size - 8 - found[0])
    return "; " + "; ".join(problems[:5]) if problems else ""


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a weights-only ``.pth``/``.pt``/``.bin`` (a ``state_dict``
    possibly nested under ``state_dict`` / ``model``).

    The path is looked at before it is opened (`edh.utils.tensor_checks`): a missing file is a
    ``FileNotFoundError``; a directory, a FIFO (never opened), an empty or a text file, a PyTorch file
    named ``.safetensors`` and bytes of no known format are each a `WeightsFileError` saying so. A
    safetensors file whose header was edited (a tensor's dtype or shape no longer fits its bytes) is
    refused naming the tensor; tensors holding NaN or Inf are refused naming them; a file written by a
    newer edh (metadata ``edh_version``) logs a warning and loads.
    """
    from edh.utils.tensor_checks import (PathProblem, check_edh_version, check_weights_path, non_finite_problem,
                                         safetensors_metadata, sniff_weights)

    try:
        path = check_weights_path(path)
    except PathProblem as problem:
        raise (FileNotFoundError if problem.missing else WeightsFileError)(problem.message) from None
    kind = sniff_weights(path)
    if path.suffix == ".safetensors" or kind == "safetensors":
        if kind in ("torch-zip", "pickle"):
            raise WeightsFileError(f"{path} is not a valid safetensors file: it is a PyTorch file (torch.save); "
                                   f"rename it to {path.with_suffix('.pth').name} to load it as one")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsFileError(f"{path} is not a valid safetensors file (corrupt header or truncated?): {error}"
                                   + _safetensors_damage(path)) from None
        check_edh_version(safetensors_metadata(path), path)
    else:
        if kind not in ("torch-zip", "pickle"):
            with open(path, "rb") as handle:
                start = handle.read(8)
            raise WeightsFileError(f"{path} is neither a PyTorch file (torch.save) nor safetensors: it starts with "
                                   f"the bytes {start!r}. Is it a weights file at all?")
        obj = torch_load(path)
        for key in ("state_dict", "model", "module"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsFileError(f"{path} does not hold a state dict of tensors")
        tensors = obj
    problem = non_finite_problem(tensors, str(path))
    if problem:
        raise WeightsFileError(problem)
    return tensors
