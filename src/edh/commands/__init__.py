"""``edh`` sub-commands, one module each: ``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args)``.
Modules import nothing heavy at the top."""

COMMANDS = ["train", "eval", "predict", "describe", "list", "demo", "finetune", "embed", "diagram", "translate", "export"]


def console():
    """A rich Console: the terminal's width, or 160 columns when the output is piped to a file."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)
