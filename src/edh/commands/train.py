from __future__ import annotations

NAME = "train"
HELP = "train a model from a run spec (YAML) into a run folder, or resume one"


def add_arguments(parser) -> None:
    parser.add_argument("spec", nargs="?", help="run spec YAML (model, data, train, trainer); optional with --resume")
    parser.add_argument("--out", help="run folder (default: runs/<spec name>)")
    parser.add_argument("--resume", metavar="RUNDIR", help="continue the run in RUNDIR from its last checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (quick checks)")


def run(args) -> int:
    from pathlib import Path

    from edh.workflows.run import CKPT_FILE
    from edh.core.spec import load_spec, RunSpec
    from edh.core.errors import SpecError

    spec = None
    if args.spec:
        spec = load_spec(args.spec)
        if not isinstance(spec, RunSpec):
            raise SpecError(f"{args.spec} is a model spec; training needs a run spec with model:, data: and train:")
    elif not args.resume:
        raise SpecError("give a run spec (edh train RUN.yaml) or --resume RUNDIR")
    if args.resume:
        run_dir = Path(args.resume)
        if spec is None:
            from edh.workflows.run import read_run_spec

            spec, _ = read_run_spec(run_dir)
    else:
        run_dir = Path(args.out or Path("runs") / Path(args.spec).stem)
        if (run_dir / CKPT_FILE).exists() and not args.force:
            raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume {run_dir}, "
                                  "pick another --out, or pass --force to start over")
    if args.epochs:
        spec.train.epochs = args.epochs
    overrides = {"max_steps": args.max_steps} if args.max_steps else {}
    from edh.train.runner import train_run

    result = train_run(spec, run_dir, resume=bool(args.resume), **overrides)
    import os

    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        print(f"run folder: {result.path}  (test it with: edh eval {result.path})")
    return 0
