from __future__ import annotations

NAME = "describe"
HELP = "print the role table of a model: each role's component, input and output shapes, params, MACs"


def add_arguments(parser) -> None:
    parser.add_argument("target", metavar="SPEC_OR_RUN", help="a model or run spec (YAML) or a run folder")
    parser.add_argument("--input-size", help="H[xW] for images, or sequence length for tokens")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def parse_size(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        parts = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        parts = ()
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise ValueError(f"--input-size must look like 224 or 224x160 (height x width; channels come from the "
                         f"spec), got {text!r}")
    return parts * 2 if len(parts) == 1 else parts


def load_model_for(target: str):
    """A model (and its data info, if known) from a run folder, a run spec or a model spec."""
    from pathlib import Path

    from edh.core.model import Model
    from edh.workflows.run import read_run_spec
    from edh.core.spec import RunSpec, load_spec

    path = Path(target)
    if path.is_dir():
        spec, info = read_run_spec(path)
        return Model(spec.model, pretrained=False), info
    spec = load_spec(path)
    if isinstance(spec, RunSpec):
        from edh.data.base import build_data
        from edh.train.resolve import resolve_spec

        info = build_data(spec.data.name, spec.data.options(), spec.data.seed).info
        return Model(resolve_spec(spec, info).model, pretrained=False), info
    return Model(spec, pretrained=False), None


def model_and_size(target: str, input_size: str | None) -> tuple[object, tuple[int, ...] | None]:
    """The model of a spec or run folder, and the input size to describe it at: ``--input-size``, else
    the data's image size; a token model keeps one number (the sequence length)."""
    model, info = load_model_for(target)
    size = parse_size(input_size)
    if size is None and info is not None and info.image_size:
        size = tuple(info.image_size)
    if size is not None:  # as many numbers as the encoder's input has sides (a token sequence: one)
        size = size[:len(model.encoder.default_input_size)]
    return model, size


def run(args) -> int:
    import json

    model, size = model_and_size(args.target, args.input_size)
    description = model.describe(size)
    if args.json:
        print(json.dumps(description.to_dict(), indent=2))
    else:
        from edh.commands import console

        console().print(description.table(str(args.target)))
    return 0
