"""``edh`` sub-commands, one module each: ``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args)``.
Modules import nothing heavy at the top.

Optional: ``ITEMS`` (the list argument that may also follow the options) and ``THREADS_SLEEP = True``
for long CPU-bound jobs (training): OpenMP threads then sleep between parallel regions
(`edh.utils.threads.set_wait_policy`), fair on a machine shared with other busy processes. Commands
without it keep OpenMP's default (a short spin), which latency-bound work needs: greedy generation ran
at 0.56x with sleeping threads (``python bench/wait_policy.py``)."""

COMMANDS = ["train", "eval", "predict", "describe", "list", "demo", "finetune", "embed", "diagram", "translate", "export", "serve"]


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag and exits with code 2 otherwise)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite number (no nan / inf)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def unit_float(text: str) -> float:
    """An argparse type: a number in [0, 1] (a score or a fraction)."""
    import argparse

    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def read_input_lines(path: str) -> list[str]:
    """The non-empty lines of a ``--input`` file (UTF-8, UTF-16 with a BOM; `edh.data.text.read_lines`)."""
    from edh.data.textfiles import read_lines

    return [line for line in read_lines(path, "input file") if line.strip()]


def console():
    """A rich Console: the terminal's width, or 160 columns when the output is piped to a file."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def add_speed_arguments(parser) -> None:
    """``--fast``, ``--bf16``, ``--compile``, ``--int8``: how a model runs (see `apply_speed_arguments`)."""
    group = parser.add_argument_group("speed (image models; same results up to float rounding, bf16 to its precision)")
    group.add_argument("--fast", action="store_true", help="channels_last and BatchNorm folded into the convs")
    group.add_argument("--bf16", action="store_true", help="bfloat16 autocast on top of --fast (about 2x on CPUs "
                       "with AVX-512 BF16 or AMX)")
    group.add_argument("--compile", action="store_true", help="torch.compile with freezing on top of --fast; "
                       "the first batch compiles (seconds)")
    group.add_argument("--int8", action="store_true", help="run the int8 graph of `edh export RUNDIR --int8` "
                       "with onnxruntime (implies --backend onnxruntime; linear layers int8, convolutions fp32)")


def apply_speed_arguments(args, loaded) -> None:
    """Replace ``loaded.model`` by an `edh.utils.perf.InferenceModel` when a speed flag is given; ``--int8``
    sets ``args.backend`` to onnxruntime and ``args.onnx`` to the int8 graph (`edh.export.int8.int8_graph`)."""
    if getattr(args, "int8", False):
        torch_flags = [f"--{name}" for name in ("fast", "bf16", "compile") if getattr(args, name, False)]
        if torch_flags:
            raise ValueError(f"--int8 runs the exported int8 graph with onnxruntime; {' / '.join(torch_flags)} "
                             "speed up the torch backend: give one or the other")
        from edh.export.int8 import int8_graph

        args.backend, args.onnx = "onnxruntime", str(int8_graph(loaded, getattr(args, "onnx", None)))
        return
    if not (args.fast or args.bf16 or args.compile):
        return
    if getattr(args, "backend", "torch") != "torch":
        raise ValueError("--fast / --bf16 / --compile speed up the torch backend; onnxruntime runs the "
                         "exported graph as it is (BatchNorm already folded): drop them or --backend")
    from edh.workflows.inputs import reader_for

    if not reader_for(loaded).speed_options:
        raise ValueError(f"--fast / --bf16 / --compile apply to image models; {loaded.path} takes "
                         f"{loaded.info.input_kind} (its decoding already reuses a KV cache)")
    from edh.utils.perf import InferenceModel

    loaded.model = InferenceModel(loaded.model, bf16=args.bf16, compile=args.compile)
