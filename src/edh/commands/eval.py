from __future__ import annotations

from edh.commands import add_speed_arguments, apply_speed_arguments

NAME = "eval"
HELP = "evaluate a run on its test split: every head's metrics and report (plots in the run folder)"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUNDIR")
    parser.add_argument("--split", choices=["test", "val", "train"], default="test")
    parser.add_argument("--out", help="folder for plots (default: RUNDIR)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_speed_arguments(parser)


def run(args) -> int:
    import json

    from edh.workflows.evaluate import evaluate_run
    from edh.workflows.run import load_run

    loaded = load_run(args.run_dir)
    apply_speed_arguments(args, loaded)
    result = evaluate_run(loaded, args.split, args.out or args.run_dir, progress=not args.json)
    if args.json:
        print(json.dumps({"split": result.split, "count": result.count, "metrics": result.metrics}, indent=2))
        return 0
    print(f"{result.split} split, {result.count} samples")
    for head, values in result.metrics.items():
        print(f"[{head}] " + "  ".join(f"{k}={v:.4f}" for k, v in values.items()))
        for line in result.reports.get(head, []):
            print("  " + line)
    return 0
