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
