"""``edh`` sub-commands, one module each: ``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args)``.
Modules import nothing heavy at the top."""

COMMANDS = ["train", "eval", "predict", "describe", "list", "demo"]
