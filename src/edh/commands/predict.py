from __future__ import annotations

from edh.commands import add_speed_arguments, apply_speed_arguments, finite_float, positive_int, read_input_lines, unit_float

NAME = "predict"
ITEMS = "images"  # the items may also follow the options (edh predict RUNDIR --top-k 3 a.png b.png)
HELP = "predict with a trained run: every head's answer for images or sentences (heads that draw write into --out)"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUNDIR")
    parser.add_argument("images", nargs="*", help="image files (text runs: sentences, or --text)")
    parser.add_argument("--text", action="append", default=[], metavar="SENTENCE",
                        help="text runs: a sentence to predict for (repeatable; one that starts with '-' as "
                             "--text=-...)")
    parser.add_argument("--input", help="text runs: a file with one sentence per line")
    parser.add_argument("--beam", type=positive_int, help="text runs: beam size (1 = greedy; default: the run's)")
    parser.add_argument("--top-k", type=positive_int, help="how many classes to show")
    parser.add_argument("--out", help="folder for pictures of the predictions (text runs: the output text file)")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="variational autoencoders: draw N images from the prior into --out/samples.png")
    parser.add_argument("--seed", type=int, default=0, help="random seed of --sample")
    parser.add_argument("--heads", nargs="+", metavar="HEAD", help="keep only these heads (the others are dropped)")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="run the eager model (torch) or the exported ONNX graph (onnxruntime; see edh export)")
    parser.add_argument("--onnx", metavar="FILE", help="the exported graph for --backend onnxruntime "
                        "(default: RUNDIR/model.onnx)")
    parser.add_argument("--allow-changed-data", action="store_true",
                        help="predict even when the run's data.json was edited after training (the preprocessing "
                             "the run was trained with is used, with a warning)")
    parser.add_argument("--max-detections", type=positive_int, metavar="N",
                        help="detection heads: keep up to N detections per image (default: each head's "
                             "max_detections; with --tile it holds for the whole image)")
    parser.add_argument("--score-thresh", type=unit_float, metavar="S",
                        help="detection heads: keep detections scoring above S in [0, 1] (default: each head's "
                             "score_thresh; yolo's 0.001 suits mAP, 0.25 suits pictures)")
    parser.add_argument("--image-ids", metavar="FILE",
                        help="image ids for the results files of --out: a JSON object {file name: id} or COCO "
                             "annotations (after the run's own COCO files; then numeric file names; else the "
                             "file name itself)")
    add_tile_arguments(parser, predict=True)
    add_speed_arguments(parser)


def add_tile_arguments(parser, predict: bool = False) -> None:
    """``--tile N`` and ``--overlap F``: sliding-window inference at the images' own size (also ``edh eval``);
    with ``predict``, ``--merge`` and ``--tiles-per-batch`` too."""
    group = parser.add_argument_group("large images (models whose heads all tile: segmentation, detection)")
    group.add_argument("--tile", type=positive_int, metavar="N",
                       help="run each image at its own size on overlapping NxN tiles, maps blended and boxes merged "
                            "where they overlap (instead of resizing it to the run's image size)")
    group.add_argument("--overlap", type=finite_float, metavar="F",
                       help="the fraction of a tile shared with its neighbour, in [0, 1) (default 0.25; with --tile)")
    if predict:
        group.add_argument("--merge", choices=["nms", "wbf"],
                           help="how detections of neighbouring tiles merge: class-wise NMS (default) or weighted "
                                "box fusion, at each head's nms_thresh (with --tile)")
        group.add_argument("--tiles-per-batch", type=positive_int, default=4, metavar="N",
                           help="tiles run in one forward (default 4): more is faster for small tiles, and holds "
                                "more memory")


def run(args) -> int:
    from edh.ops.generation import generates
    from edh.workflows.inputs import reader_for
    from edh.workflows.predict import predict_inputs
    from edh.workflows.run import load_run

    loaded = load_run(args.run_dir)
    texts = list(getattr(args, "text", None) or [])
    if texts and not reader_for(loaded).texts:
        raise ValueError(f"--text gives sentences, but {loaded.path} takes {loaded.info.input_kind} inputs: give "
                         "their files as arguments (edh predict RUNDIR FILE ...)")
    apply_speed_arguments(args, loaded)
    if getattr(args, "backend", "torch") == "onnxruntime":
        from edh.export.runs import onnx_run

        if getattr(args, "sample", None) is not None:
            raise ValueError("--sample decodes with the eager decoder; drop --backend onnxruntime to sample")
        loaded = onnx_run(loaded, args.onnx)
    if generates(loaded.model):  # a generating model: text out, step by step
        from edh.workflows.translate import translate_lines

        translate_lines(loaded, [*args.images, *texts], args.input, args.out, beam_size=args.beam)
        return 0
    if getattr(args, "sample", None) is not None:
        from edh.workflows.predict import sample_images

        if not args.out:
            raise ValueError("--sample writes a picture: give --out DIR")
        print(f"wrote {sample_images(loaded, args.sample, args.out, args.seed)}")
        if not args.images:
            return 0
    items = [*args.images, *texts]
    if args.input:
        items += read_input_lines(args.input)
    if not items:
        raise ValueError("give one or more inputs: edh predict RUNDIR img.png ... (text runs: --text \"a sentence\" "
                         "..., or --input FILE of sentences)")
    if args.heads:
        loaded.model.remove_heads(args.heads)
    settings = {key: getattr(args, key, None) for key in ("max_detections", "score_thresh")}
    results, written = predict_inputs(loaded, items, args.out, args.top_k,
                                      allow_changed_data=getattr(args, "allow_changed_data", False),
                                      tile=getattr(args, "tile", None), overlap=getattr(args, "overlap", None),
                                      progress=True, merge=getattr(args, "merge", None),
                                      tiles_per_batch=getattr(args, "tiles_per_batch", 4),
                                      image_ids=getattr(args, "image_ids", None),
                                      settings={k: v for k, v in settings.items() if v is not None} or None)
    for result in results:
        for head, line in result.lines.items():
            print(f"{result.source}\t{head}: {line}")
    for path in written:
        print(f"wrote {path}")
    return 0
