from __future__ import annotations

NAME = "demo"
HELP = "train and evaluate the built-in example models on built-in data, printing each role table and result"
THREADS_SLEEP = True  # a long CPU-bound job: idle OpenMP threads sleep (fair on a shared machine)


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where the demo run folders go (default runs/demo)")
    parser.add_argument("--only", nargs="*", help="run only these demos")
    parser.add_argument("--quick", action="store_true", help="a few steps each (a smoke test, not a result)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="time budget of the whole demo (default 10): on a slower machine each model trains "
                             "for its share of it and the report says which schedules were cut; 0: full schedules")


def run(args) -> int:
    from pathlib import Path

    from edh.heads.base import headline
    from edh.workflows.demo import DEMOS, run_demo

    chosen = [d for d in DEMOS if not args.only or d.name in args.only]
    unknown = set(args.only or []) - {d.name for d in DEMOS}
    if unknown:
        raise ValueError(f"unknown demo {', '.join(sorted(unknown))}; demos: {', '.join(d.name for d in DEMOS)}")
    import time

    from edh.workflows.demo import training_cap

    if args.minutes < 0:
        raise ValueError(f"--minutes must be 0 (no budget) or more, got {args.minutes:g}")
    deadline = time.monotonic() + args.minutes * 60
    results = []
    for index, demo in enumerate(chosen):
        print(f"\n=== {demo.title} ===", flush=True)
        cap = training_cap(deadline - time.monotonic(), [d.weight for d in chosen[index:]]) if args.minutes else None
        result = run_demo(demo, Path(args.out), quick=args.quick, max_train_seconds=cap)
        if result.note:
            print(f"note: {result.note}")
        print(result.table)
        for head, values in result.metrics.items():
            print(f"test [{head}] " + "  ".join(f"{k}={v:.4f}" for k, v in headline(values).items()))
        results.append(result)
    from edh.inspection.report import write_report

    html_path, md_path = write_report(results, Path(args.out))
    print("\n=== summary ===")
    for result in results:
        metrics = "; ".join(f"{h}: " + ", ".join(f"{k}={v:.3f}" for k, v in list(headline(m).items())[:3])
                            for h, m in result.metrics.items())
        print(f"{result.demo.name:<12} {result.seconds:6.1f}s  {metrics}  ({result.run_dir})")
    print(f"report: {html_path} (and {md_path.name})")
    return 0
