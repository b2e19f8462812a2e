from __future__ import annotations

from edh.commands import add_speed_arguments, apply_speed_arguments

NAME = "eval"
HELP = "evaluate a run on its test split: every head's metrics and report (plots in the run folder)"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUNDIR")
    parser.add_argument("--split", choices=["test", "val", "train"], default="test")
    parser.add_argument("--out", help="folder for plots (default: RUNDIR)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--allow-changed-data", action="store_true",
                        help="evaluate even when the data on disk is not what the run trained on (renamed / added "
                             "classes, files moved between splits, other preprocessing): a warning lists the changes")
    from edh.commands.predict import add_tile_arguments

    add_tile_arguments(parser)
    add_speed_arguments(parser)


def run(args) -> int:
    """Metrics are printed first, plots written after: a plot that cannot be written (a read-only run
    folder) is a warning naming the file, and the exit code stays 0."""
    import json
    import logging

    from edh.heads.base import headline
    from edh.ops.generation import generates
    from edh.workflows.evaluate import evaluate_run, write_plots
    from edh.workflows.run import load_run

    loaded = load_run(args.run_dir)
    apply_speed_arguments(args, loaded)
    out = args.out or args.run_dir
    allow = getattr(args, "allow_changed_data", False)
    generating = generates(loaded.model)  # its translations file is written while evaluating (if it can be)
    result = evaluate_run(loaded, args.split, out if generating else None, progress=not args.json,
                          allow_changed_data=allow, tile=getattr(args, "tile", None),
                          overlap=getattr(args, "overlap", None))
    if args.json:
        print(json.dumps({"split": result.split, "count": result.count, "metrics": result.metrics}, indent=2),
              flush=True)
    else:
        print(f"{result.split} split, {result.count} samples")
        for head, values in result.metrics.items():
            print(f"[{head}] " + "  ".join(f"{k}={v:.4f}" for k, v in headline(values).items()))
            for line in result.reports.get(head, []):
                print("  " + line)
        print(end="", flush=True)
    if generating:
        return 0
    problems = write_plots(loaded, result, out)
    if not args.json:
        for line in getattr(result, "written", []):
            print("  " + line)
    log = logging.getLogger("edh")
    for problem in problems:
        log.warning("%s. The metrics above are complete; give --out DIR to write the plots elsewhere.", problem)
    return 0
