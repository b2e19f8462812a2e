from __future__ import annotations

from edh.commands import positive_int

NAME = "train"
HELP = "train a model from a run spec (YAML) into a run folder, or resume one"
THREADS_SLEEP = True  # a long CPU-bound job: idle OpenMP threads sleep (fair on a shared machine)


def add_arguments(parser) -> None:
    parser.add_argument("spec", nargs="?", help="run spec YAML (model, data, train, trainer); optional with --resume")
    parser.add_argument("--out", help="run folder (default: runs/<spec name>)")
    parser.add_argument("--resume", metavar="RUNDIR",
                        help="continue the run in RUNDIR from its last checkpoint (a SPEC given too may change "
                             "only train.epochs, trainer devices / accelerator / num_nodes / strategy, "
                             "data.num_workers and the like: see docs/reliability.md)")
    parser.add_argument("--force", action="store_true",
                        help="replace the run in --out; the old one is kept in OUT/.previous until the new one "
                             "has written its first checkpoint")
    parser.add_argument("--epochs", type=positive_int, help="override train.epochs")
    parser.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps (quick checks)")


def run(args) -> int:
    from pathlib import Path

    from edh.core.spec import load_spec, RunSpec
    from edh.core.errors import SpecError

    if args.resume and args.force:
        raise SpecError("--resume continues the run in RUNDIR and --force replaces it: give one of them")
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise SpecError(f"--resume {args.resume} trains on in that folder; --out {args.out} names another one. "
                        "Drop --out (or copy the run there and resume the copy)")
    spec = None
    if args.spec:
        spec = load_spec(args.spec)
        if not isinstance(spec, RunSpec):
            raise SpecError(f"{args.spec} is a model spec; training needs a run spec with model:, data: and train:")
    elif not args.resume:
        raise SpecError("give a run spec (edh train RUN.yaml) or --resume RUNDIR")
    # resuming without a spec: train_run reads the run's own (after it has put back a run that a killed
    # --force start had moved aside)
    run_dir = Path(args.resume) if args.resume else Path(args.out or Path("runs") / Path(args.spec).stem)
    overrides = {"max_steps": args.max_steps} if args.max_steps is not None else {}
    from edh.train.runner import launch_rank_zero, train_run

    result = train_run(spec, run_dir, resume=bool(args.resume), force=args.force, source=args.spec,
                       epochs=args.epochs, **overrides)
    if launch_rank_zero():
        print(f"run folder: {result.path}  (test it with: edh eval {result.path})")
    return 0
