"""edh's own error types: what a user did wrong, with where and how to fix it in the message.

Every error a user can cause is an `EdhError` (or one of the standard errors the CLI also treats as
a user's: see `edh.cli`): the CLI prints its message as one paragraph and exits with code 2; ``-v``
adds the traceback. Each subclass also derives from the standard exception it refines, so callers
that catch ``ValueError`` / ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


class EdhError(Exception):
    """A user error edh explains: what was wrong, where (file, key, line, annotation id), how to fix it."""


class SpecError(EdhError, ValueError):
    """A spec that cannot be used, with the key path, the file and the fix in the message."""


class DataError(EdhError, ValueError):
    """Data on disk that edh cannot use as it is (a file, a line, an annotation), named in the message."""


class RunFolderError(EdhError, FileNotFoundError):
    """A run folder that lacks what a command needs, or that a command may not change."""


class DataItemError(DataError):
    """One sample that cannot be loaded (its file named in the message), raised by a dataset's ``__getitem__``.

    Raised inside a DataLoader worker (``data.num_workers > 0``) it keeps its message: the DataLoader
    re-raises it in the main process as ``type(error)("Caught ... in DataLoader worker process N.\\n
    Original Traceback ...")``; this constructor keeps only the original message, so the command
    line shows the one clear paragraph, not the worker's traceback.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(_original_message(str(message)), *args)


def _original_message(text: str) -> str:
    """The message of the exception a DataLoader worker caught, out of the text it re-raises with."""
    import re

    match = re.match(r"Caught (\w+) in (?:DataLoader worker process \d+|pin memory thread[^.]*)\.\nOriginal ", text)
    if not match:
        return text
    name = match.group(1)
    start = max(text.rfind(f".{name}: "), text.rfind(f"\n{name}: "))
    if start < 0:
        return text
    return text[start + len(name) + 3:].strip()


class RunExistsError(RunFolderError, FileExistsError):
    """A run folder that already holds a run, where a command would start a new one (``--force``,
    ``--resume`` or another ``--out`` are the ways on; the message names them and what is there)."""


class RunInUseError(RunFolderError):
    """A run folder another process is writing (it holds the folder's lock); ``pid`` is that process."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class ResumeMismatchError(SpecError):
    """``edh train SPEC --resume RUN`` where SPEC changes what the run's checkpoint was trained as."""


class DiskFullError(EdhError, OSError):
    """No space left (ENOSPC / EDQUOT) while saving a file: the message names the file and says that the
    previous copy of it is intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (SIGINT); the message says where it stopped and how to resume.
    A ``KeyboardInterrupt`` (not an `EdhError`): the CLI exits with 130, the shell's code for SIGINT."""
