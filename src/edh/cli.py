"""The ``edh`` command line. Each command lives in ``edh/commands/<name>.py`` and imports its heavy
dependencies only when it runs, so ``edh --help`` stays fast and only ``train`` loads Lightning."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from edh.commands import COMMANDS
from edh.version import __version__

DESCRIPTION = "edh: build, train, evaluate, explain and export models made of Encoder -> [Decoder] -> Heads."
EPILOG = "A model is Encoder -> [Decoder] -> Heads. `edh demo` trains the built-in examples; `edh COMMAND -h` for help."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edh", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"edh {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"edh.commands.{name}")
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a user error: one clear paragraph, no traceback unless --verbose
        if args.verbose or not _is_user_error(error):
            raise
        print(f"edh {args.command}: error: {error}", file=sys.stderr)
        return 1


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    edh_log = logging.getLogger("edh")
    edh_log.addHandler(handler)
    edh_log.setLevel(logging.DEBUG if verbose else logging.INFO)
    edh_log.propagate = False
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


def _is_user_error(error: Exception) -> bool:
    return isinstance(error, (ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError,
                              FloatingPointError))  # a diverging run: its message says what to change


if __name__ == "__main__":
    sys.exit(main())
