from __future__ import annotations

from edh.commands import positive_int

NAME = "finetune"
HELP = "train a new run from a trained one after head surgery, keeping encoder/decoder (and fitting head) weights"
THREADS_SLEEP = True  # a long CPU-bound job: idle OpenMP threads sleep (fair on a shared machine)


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUNDIR", help="the trained run to start from")
    parser.add_argument("--spec", help="a run spec whose data/train/trainer sections replace the run's "
                                       "(its model section is ignored: the model is the run's, after surgery)")
    parser.add_argument("--replace-head", action="append", default=[], metavar="NAME:TYPE[:k=v,...]",
                        help="swap head NAME, e.g. label:classification:num_classes=5")
    parser.add_argument("--add-head", action="append", default=[], metavar="NAME:TYPE[:k=v,...]",
                        help="add a head, e.g. count:regression:source=encoder")
    parser.add_argument("--remove-head", action="append", default=[], metavar="NAME")
    parser.add_argument("--freeze", nargs="*", help="roles to freeze (encoder, decoder, heads.NAME)")
    parser.add_argument("--lr", help="one learning rate, or per role: encoder=1e-4,heads=1e-3")
    parser.add_argument("--epochs", type=positive_int, help="override train.epochs")
    parser.add_argument("--out", required=True, help="the new run folder")
    parser.add_argument("--force", action="store_true", help="replace the run in --out if it holds one (kept "
                                                             "in OUT/.previous until the new run's first checkpoint)")


def run(args) -> int:
    from pathlib import Path

    from edh.workflows.run import load_run
    from edh.core.spec import RunSpec, load_spec, parse_run_spec, to_dict
    from edh.core.errors import SpecError
    from edh.workflows.surgery import parse_head_option

    source = load_run(args.run_dir)
    spec = to_dict(source.spec)
    if args.spec:
        other = load_spec(args.spec)
        if not isinstance(other, RunSpec):
            raise SpecError(f"{args.spec} is a model spec; --spec needs a run spec (data:, train:, trainer:)")
        other = to_dict(other)
        spec.update({k: other[k] for k in ("data", "train", "trainer")})
    heads = spec["model"]["heads"]
    for text in args.replace_head:
        name, options = parse_head_option(text)
        if name not in heads:
            raise SpecError(f"--replace-head {text}: the run has no head {name!r} (heads: {', '.join(heads)}); "
                            "use --add-head to add one")
        keep = {k: heads[name][k] for k in ("source", "weight", "target") if k in heads[name]}
        heads[name] = {**keep, **options}
    for text in args.add_head:
        name, options = parse_head_option(text)
        if name in heads:
            raise SpecError(f"--add-head {text}: head {name!r} exists; use --replace-head")
        heads[name] = options
    for name in args.remove_head:
        if heads.pop(name, None) is None:
            raise SpecError(f"--remove-head {name}: no such head (heads: {', '.join(heads)})")
    if args.freeze is not None:
        spec["train"]["freeze"] = args.freeze
    if args.lr:
        spec["train"]["lr"] = _parse_lr(args.lr)
    if args.epochs is not None:
        spec["train"]["epochs"] = args.epochs
    new_spec = parse_run_spec(spec, "finetune options")
    out = Path(args.out)
    from edh.train.runner import train_run

    # a folder that holds a run is refused without --force; with it, the old run is kept until the new
    # one's first checkpoint (edh.train.runner.train_run)
    from edh.heads.data_checks import ClassCountError

    try:
        result = train_run(new_spec, out, init_from=source.model, force=args.force, source=args.spec)
    except ClassCountError as error:
        raise SpecError(_fewer_classes_than_the_data(error, args)) from None
    print(f"run folder: {result.path}")
    return 0


def _parse_lr(text: str):
    if "=" not in text:
        return float(text)
    rates = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        rates[key.strip()] = float(value)
    return rates


def _fewer_classes_than_the_data(error, args) -> str:
    """What a `ClassCountError` means for ``edh finetune``: the new head has fewer classes than the
    data it would train on, the run's own unless ``--spec`` gives other data."""
    name = error.head.removeprefix("model.heads.")
    data = f"--spec {args.spec}'s data" if args.spec else f"the run's data ({error.dataset.removeprefix('the data ')})"
    return (f"head {name!r} has {error.have} classes, but {data} has {error.need} in its {error.key!r} target "
            f"(labels past {error.have - 1} would have no output). A finetuned run trains on the run's data "
            "unless --spec gives another: to train fewer classes, give --spec NEW.yaml whose data: has them "
            f"(its data:, train: and trainer: replace the run's), or keep num_classes={error.need}")
