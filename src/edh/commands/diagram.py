from __future__ import annotations

NAME = "diagram"
HELP = "draw a model's composition (encoder levels, decoder, heads; arrows labelled with shapes) to .svg or .png"


def add_arguments(parser) -> None:
    parser.add_argument("target", metavar="SPEC_OR_RUN", help="a model or run spec (YAML) or a run folder")
    parser.add_argument("--out", required=True, help="model.svg or model.png")
    parser.add_argument("--input-size", help="H[xW] for images, or sequence length for tokens")


def run(args) -> int:
    from edh.commands.describe import load_model_for, parse_size
    from edh.diagram import draw

    model, info = load_model_for(args.target)
    size = parse_size(args.input_size)
    if size is None and info is not None and info.image_size:
        size = tuple(info.image_size)
    if size is not None and model.encoder.input_kind == "tokens":
        size = size[:1]
    path = draw(model, model.describe(size), args.out, title=str(args.target))
    print(f"wrote {path}")
    return 0
