from __future__ import annotations

from edh.commands import positive_int

NAME = "export"
HELP = "export a trained run to ONNX (BatchNorm folded, checked against eager PyTorch with onnxruntime)"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUNDIR")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: onnx)")
    parser.add_argument("--heads", nargs="+", metavar="HEAD", help="keep only these heads (default: all)")
    parser.add_argument("--out", metavar="FILE", help="the .onnx file (default: RUNDIR/model.onnx)")
    parser.add_argument("--opset", type=positive_int, help="ONNX opset version (default: 17)")
    parser.add_argument("--tolerance", type=float,
                        help="largest allowed max abs diff to eager PyTorch, relative to max(1, |values|) "
                        "(default 1e-4)")
    parser.add_argument("--nms", action="store_true",
                        help="detectors: put score filtering and NMS in the graph (outputs boxes, scores, labels)")
    parser.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers instead of folding them")
    parser.add_argument("--input-size", type=positive_int, nargs=2, metavar=("H", "W"),
                        help="image size to export for (runs whose data keeps each image's own size)")
    parser.add_argument("--int8", action="store_true",
                        help="also write dynamically int8-quantized graph(s) beside the fp32 ones (MatMul / Gemm "
                             "weights int8, convolutions fp32; model.int8.onnx), checked against fp32")


def run(args) -> int:
    from edh.export.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE
    from edh.export.runs import export_run
    from edh.workflows.run import load_run

    run_ = load_run(args.run_dir)
    report = export_run(run_, args.out, args.heads, opset=args.opset or DEFAULT_OPSET,
                        tolerance=args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE,
                        fold_bn=not args.no_fold_bn, nms=args.nms,
                        input_size=tuple(args.input_size) if args.input_size else None)
    for line in report.lines():
        print(line)
    if getattr(args, "int8", False):
        from edh.export.int8 import int8_lines, quantize_export

        for line in int8_lines(quantize_export(run_, report)):
            print(line)
    return 0
