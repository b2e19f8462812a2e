"""The ``edh`` command line. Each command lives in ``edh/commands/<name>.py`` and imports its heavy
dependencies only when it runs, so ``edh --help`` stays fast and only ``train`` loads Lightning."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback
import warnings

from edh.commands import COMMANDS
from edh.utils.threads import THREADS_ENV, apply_threads, check_threads, set_wait_policy
from edh.version import __version__

DESCRIPTION = "edh: build, train, evaluate, explain and export models made of Encoder -> [Decoder] -> Heads."
EPILOG = "A model is Encoder -> [Decoder] -> Heads. `edh demo` trains the built-in examples; `edh COMMAND -h` for help."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edh", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"edh {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and full tracebacks")
    parser.add_argument("--threads", type=thread_count, metavar="N", help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"edh.commands.{name}")
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        # also after the command (edh train SPEC --threads 2); SUPPRESS keeps a value given before it
        command.add_argument("--threads", type=thread_count, metavar="N", default=argparse.SUPPRESS,
                             help=THREADS_HELP)
        command.set_defaults(handler=module.run, items_dest=getattr(module, "ITEMS", None),
                             threads_sleep=getattr(module, "THREADS_SLEEP", False))
    return parser


THREADS_HELP = (f"CPU threads torch uses (default: train.threads of a spec given to edh train, else "
                f"${THREADS_ENV}, else the usable cores); fewer on a machine shared with other busy processes")


def thread_count(text: str) -> int:
    """An argparse type: a thread count (argparse names the flag and exits with code 2 otherwise)."""
    try:
        return check_threads(text, "it")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("it must", "must", 1)) from None


USER_ERROR_EXIT = 2  # a user error: one paragraph (what, where, how to fix); `-v` adds the traceback
INTERRUPT_EXIT = 130  # Ctrl-C (128 + SIGINT, as the shell reports it); SIGTERM during training: 143


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done; 2 a user error (the message says what, where and how to
    fix it; also for bad arguments); 130 Ctrl-C (143 SIGTERM during training), with where training
    stopped and how to resume; 1 an internal error (a bug: its traceback is shown)."""
    parser = build_parser()  # imports no torch: the wait policy below must come before torch loads
    args, extras = parser.parse_known_args(argv)
    if getattr(args, "threads_sleep", False):
        set_wait_policy()
    if extras and getattr(args, "items_dest", None) and not any(item.startswith("-") for item in extras):
        # items after an option (edh predict RUN --top-k 3 a.png b.png): argparse fills a command's
        # list of items (its ``ITEMS``) only before the first option and leaves the rest over
        getattr(args, args.items_dest).extend(extras)
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    _setup_logging(args.verbose)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        _apply_threads(args)
        return int(args.handler(args) or 0)
    except BrokenPipeError:  # `edh list datasets | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python would complain at exit
        return 0
    except KeyboardInterrupt as error:
        if args.verbose:
            traceback.print_exc()
        message = str(error) if error.args else "interrupted"
        print(f"edh {args.command}: {message}", file=sys.stderr)
        return int(getattr(error, "exit_code", INTERRUPT_EXIT))
    except Exception as error:  # a user error: one clear paragraph, no traceback unless --verbose
        if not _is_user_error(error):
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"edh {args.command}: error: {user_message(error)}", file=sys.stderr)
        return USER_ERROR_EXIT


def _apply_threads(args: argparse.Namespace) -> None:
    """``--threads``, else ``train.threads`` of the spec `edh train` was given, else ``$EDH_THREADS``;
    torch's own default (the usable cores) when none is given, without importing torch for it. An
    explicit count is exported as ``$EDH_THREADS`` so processes edh starts (DDP ranks) follow it."""
    threads = args.threads if args.threads is not None else _spec_threads(args)
    if threads is None and not os.environ.get(THREADS_ENV, "").strip():
        return
    used = apply_threads(threads)
    if threads is not None:
        os.environ[THREADS_ENV] = str(used)
    logging.getLogger("edh").debug("torch uses %d CPU threads", used)


def _spec_threads(args: argparse.Namespace) -> int | None:
    """``train.threads`` of the run spec given to `edh train` (None when absent; the command itself
    reports a spec it cannot read)."""
    if args.command != "train" or not getattr(args, "spec", None):
        return None
    from edh.core.errors import SpecError
    from edh.core.spec_yaml import read_yaml

    try:
        train = read_yaml(args.spec).get("train")
    except (SpecError, OSError):
        return None
    value = train.get("threads") if isinstance(train, dict) else None
    return None if value is None else check_threads(value, f"train.threads in {args.spec}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (one handler, however often
    `main` runs in a process: tests and notebooks replace stderr between calls)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(verbose: bool) -> None:
    edh_log = logging.getLogger("edh")
    for old in [h for h in edh_log.handlers if isinstance(h, _StderrHandler)]:
        edh_log.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    edh_log.addHandler(handler)
    edh_log.setLevel(logging.DEBUG if verbose else logging.INFO)
    edh_log.propagate = False
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC),
                errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR,
                errno.EADDRINUSE, errno.EADDRNOTAVAIL}  # edh serve --port / --host


def _is_user_error(error: Exception) -> bool:
    """edh's own errors (`edh.core.errors.EdhError`), the standard ones its checks raise, and what the
    file system says about the user's paths (permissions, a read-only or full disk, a missing file)."""
    from edh.core.errors import EdhError

    if isinstance(error, (EdhError, ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError,
                          FloatingPointError)):  # FloatingPointError: a diverging run, its message says what to change
        return True
    return isinstance(error, OSError) and error.errno in _USER_ERRNOS


def user_message(error: Exception) -> str:
    """The paragraph printed for a user error: its message (a bare OSError: what the system said, the
    file, and what to check)."""
    from edh.core.errors import EdhError

    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    if isinstance(error, OSError) and not isinstance(error, EdhError) and error.filename and error.strerror:
        hint = {errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
                errno.EROFS: "the file system is read-only: write somewhere else",
                errno.ENOSPC: "the disk is full: free some space"}.get(error.errno, "check the path")
        return f"{error.strerror}: {error.filename} ({hint})"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
