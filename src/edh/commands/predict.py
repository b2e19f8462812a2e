from __future__ import annotations

NAME = "predict"
HELP = "predict with a trained run: top-k labels for images (heads that draw write into --out)"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUNDIR")
    parser.add_argument("images", nargs="*", help="image files")
    parser.add_argument("--top-k", type=int, help="how many classes to show")
    parser.add_argument("--out", help="folder for pictures of the predictions")


def run(args) -> int:
    from edh.predict import predict_images
    from edh.run import load_run

    if not args.images:
        raise ValueError("give one or more image files: edh predict RUNDIR img.png ...")
    loaded = load_run(args.run_dir)
    results, written = predict_images(loaded, args.images, args.out, args.top_k)
    for result in results:
        for head, line in result.lines.items():
            print(f"{result.path}\t{head}: {line}")
    for path in written:
        print(f"wrote {path}")
    return 0
