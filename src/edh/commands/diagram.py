from __future__ import annotations

NAME = "diagram"
HELP = "draw a model's composition (encoder levels, decoder, heads; arrows labelled with shapes) to .svg or .png"


def add_arguments(parser) -> None:
    parser.add_argument("target", metavar="SPEC_OR_RUN", help="a model or run spec (YAML) or a run folder")
    parser.add_argument("--out", required=True, help="model.svg or model.png")
    parser.add_argument("--input-size", help="H[xW] for images, or sequence length for tokens")


def run(args) -> int:
    from edh.commands.describe import model_and_size
    from edh.inspection.diagram import draw

    model, size = model_and_size(args.target, args.input_size)
    path = draw(model, model.describe(size), args.out, title=str(args.target))
    print(f"wrote {path}")
    return 0
