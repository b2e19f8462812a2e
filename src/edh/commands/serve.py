from __future__ import annotations

from edh.commands import add_speed_arguments, apply_speed_arguments, positive_int, unit_float

NAME = "serve"
HELP = ("serve a trained run over HTTP with dynamic batching: POST /predict, GET /health, GET /metadata, "
        "and a page at / to try it")


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUNDIR")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one and prints it)")
    parser.add_argument("--max-batch-size", type=positive_int, default=16, metavar="N",
                        help="inputs of concurrent requests run in one forward, up to N (default 16)")
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0, metavar="MS",
                        help="how long the first request of a batch waits for others to join it (default 5 ms)")
    parser.add_argument("--max-body-mb", type=float, default=16.0, metavar="MB",
                        help="larger request bodies get a 413 (default 16 MB)")
    parser.add_argument("--max-inputs", type=positive_int, default=64, metavar="N",
                        help="inputs one request may carry (default 64)")
    parser.add_argument("--beam", type=positive_int, help="generating runs: beam size (default: the run's)")
    parser.add_argument("--score-thresh", type=unit_float, metavar="S",
                        help="detection heads: keep detections scoring above S (default: each head's)")
    parser.add_argument("--max-detections", type=positive_int, metavar="N",
                        help="detection heads: keep up to N detections per image (default: each head's)")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="the eager model (torch) or the exported ONNX graph (onnxruntime; see edh export)")
    parser.add_argument("--onnx", metavar="FILE", help="the graph for --backend onnxruntime (default RUNDIR/model.onnx)")
    parser.add_argument("--allow-changed-data", action="store_true",
                        help="serve even when the run's data.json was edited after training (with a warning)")
    add_speed_arguments(parser)


def run(args) -> int:
    from edh.serve.server import serve
    from edh.workflows.run import load_run

    if args.batch_timeout_ms < 0:
        raise ValueError(f"--batch-timeout-ms is a wait in milliseconds (0 or more), got {args.batch_timeout_ms}")
    if args.max_body_mb <= 0:
        raise ValueError(f"--max-body-mb is a size in megabytes (more than 0), got {args.max_body_mb}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port is a TCP port in 0..65535, got {args.port}")
    loaded = load_run(args.run_dir)
    apply_speed_arguments(args, loaded)
    if args.backend == "onnxruntime":
        from edh.export.runs import onnx_run

        loaded = onnx_run(loaded, args.onnx)
    settings = {key: getattr(args, key) for key in ("score_thresh", "max_detections") if getattr(args, key) is not None}
    serve(loaded, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
          batch_timeout_ms=args.batch_timeout_ms, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
          max_inputs=args.max_inputs, backend=args.backend if not args.int8 else "onnxruntime int8",
          beam_size=args.beam, settings=settings, allow_changed_data=args.allow_changed_data,
          speed=[flag for flag in ("fast", "bf16", "compile") if getattr(args, flag)])
    return 0
