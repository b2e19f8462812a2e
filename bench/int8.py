"""Dynamic int8 quantization against fp32 on two trained runs: quality and speed, and a ship verdict per model.

Run: ``python bench/int8.py [--runs DIR] [--quick] [--repeats N] [--threads T] [--max-wait S]``.

- classifier: ``configs/digits-resnet18.yaml`` (about 30 s of training). Test-split accuracy of eager
  PyTorch fp32, onnxruntime fp32 and onnxruntime int8 (the head's ``acc`` metric, as ``edh eval``), and
  images/s at batch 64 for each.
- translator: ``configs/translator-numbers.yaml`` (under a minute here). Test BLEU and exact match
  (greedy, `edh.workflows.translate.evaluate_translation`) and greedy generation tokens/s at batch 8
  (8 test sources, exactly 16 new tokens each) for eager PyTorch fp32 (its KV cache), onnxruntime fp32
  and int8, and eager PyTorch with torch.ao dynamic quantization (``quantize_dynamic`` of every
  ``nn.Linear``) where that runs; when it does not, the row says why.

Both runs are exported with `edh.export.runs.export_run` and quantized as ``edh export --int8`` does
(`edh.export.int8.quantize_export`: onnxruntime ``quantize_dynamic``, MatMul / Gemm weights int8,
convolutions fp32). Verdict per int8 contender: "ship" when its quality drop against onnxruntime fp32 is
at most 0.5 points (accuracy in %, or BLEU) and it is faster than the fastest fp32 contender, else
"do not ship" with the reason. ``--runs DIR`` reuses (or trains into) ``DIR/classifier`` and
``DIR/translator``; ``--quick`` trains shorter (1-2 epochs) and times 2 rounds. onnxruntime gets the
same thread count as torch and its threads do not spin-wait after a run (``session.intra_op.allow_spinning``
0): spinning threads took the cores from the eager contender timed next and slowed it several-fold
on 2 cores. Contenders run round-robin (`common.measure`); medians are reported;
results in ``bench/results/int8.json``, with how many cores other processes used before and after.
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from common import (Contender, apply_threads, base_parser, environment, measure, noisy_warning, others_cores,
                    print_table, summarize, write_json)

from edh.export.int8 import int8_path, quantize_export
from edh.export.onnx import ExportCheckError
from edh.export.runs import export_run, onnx_run, sample_images
from edh.ops.generation import generate
from edh.workflows.run import Run, holds_run, load_run

CONFIGS = {"classifier": "digits-resnet18.yaml", "translator": "translator-numbers.yaml"}
QUICK_EPOCHS = {"classifier": 2, "translator": 1}
MAX_DROP = 0.5  # points of accuracy (%) or BLEU
QUIET_CORES = 0.25
IMAGE_BATCH, GEN_BATCH, NEW_TOKENS = 64, 8, 16
COLUMNS = ["name", "quality", "items_per_s", "ms_per_step", "speedup", "quiet_samples", "verdict"]


def trained_run(name: str, folder: Path, quick: bool) -> tuple[Run, float | None]:
    """The run in ``folder`` if it holds one, else ``CONFIGS[name]`` trained into it; and the training seconds."""
    if holds_run(folder):
        print(f"{name}: reusing {folder}", flush=True)
        return load_run(folder), None
    from edh.train.runner import train_run
    from edh.workflows.demo import load_config

    spec = load_config(CONFIGS[name], {"train.epochs": QUICK_EPOCHS[name]} if quick else {})
    start = time.perf_counter()
    run = train_run(spec, folder, force=True, enable_progress_bar=False)
    seconds = time.perf_counter() - start
    print(f"{name}: trained {CONFIGS[name]} in {seconds:.0f} s", flush=True)
    return run, seconds


def export_int8(run: Run) -> tuple[Path, Path, list[str]]:
    """fp32 and int8 graphs in the run folder; the int8 export's notes (or why its check failed: the
    int8 files are written before the check, so they are measured all the same)."""
    report = export_run(run)
    try:
        notes = quantize_export(run, report).notes
    except ExportCheckError as error:
        notes = [f"int8 export check FAILED: {error}"]
    for line in notes:
        print(f"  {line}", flush=True)
    return report.files[0], int8_path(report.files[0]), notes


def torch_ao_int8(run: Run, source: torch.Tensor) -> tuple[Run | None, str]:
    """The run with torch.ao dynamic int8 ``nn.Linear`` layers, or None and why it does not generate."""
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(run.model), {torch.nn.Linear},
                                                       dtype=torch.qint8)
    try:
        generate(model, source[:1], beam_size=1, max_new_tokens=2)
    except Exception as error:  # noqa: BLE001 - report whatever breaks, the bench goes on
        return None, f"torch.ao int8 does not generate: {type(error).__name__}: {error}"
    return Run(run.path, model, run.spec, run.info), ""


def test_accuracy(models: dict[str, Run], head_name: str = "label") -> dict[str, dict[str, float]]:
    """Test-split accuracy (%) of each model, scored as ``edh eval`` does (the eager head's ``acc`` metric;
    `evaluate_run` itself takes eager models only: an onnxruntime model has no ``target_key``)."""
    from torch.utils.data import DataLoader

    from edh.train.batch import task_targets, unpack_batch
    from edh.workflows.data_check import rebuild_data

    eager = next(iter(models.values())).model.eval()
    head = eager.heads[head_name]
    bundle = rebuild_data(next(iter(models.values())))
    metrics = {name: head.make_metrics("val") for name in models}
    with torch.inference_mode():
        for batch in DataLoader(bundle.test, batch_size=IMAGE_BATCH, collate_fn=bundle.collate_fn):
            inputs, targets, context = unpack_batch(batch)
            labels = task_targets(eager, head_name, head, targets)
            for name, run in models.items():
                head.update_metrics(metrics[name], run.model(inputs, **context)[head_name], labels)
    return {name: {"accuracy_pct": 100 * float(metrics[name].compute()["acc"])} for name in models}


def translation_quality(run: Run) -> dict[str, float]:
    from edh.workflows.translate import evaluate_translation

    metrics = evaluate_translation(run, "test", progress=False, examples=0).metrics["tokens"]
    return {"bleu": metrics["bleu"], "exact_match": metrics["exact_match"]}


def image_step(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    def step() -> Any:
        with torch.inference_mode():
            return model(images)

    return step


def generation_step(model: Any, source: torch.Tensor) -> Callable[[], Any]:
    return lambda: generate(model, source, beam_size=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)


def classifier_case(run: Run) -> tuple[list[Contender], dict[str, dict[str, float]], list[str]]:
    fp32, int8, notes = export_int8(run)
    models = {"eager fp32": run, "onnxruntime fp32": onnx_run(run, fp32), "onnxruntime int8": onnx_run(run, int8)}
    quality = test_accuracy(models)
    images = sample_images(run, IMAGE_BATCH, tuple(run.info.image_size))
    contenders = [Contender(name, image_step(r.model, images), IMAGE_BATCH) for name, r in models.items()]
    return contenders, quality, notes


def test_sources(run: Run, count: int) -> torch.Tensor:
    """The first ``count`` test sources of the run's data, right-padded ``(count, S)``."""
    from edh.workflows.data_check import rebuild_data

    bundle = rebuild_data(run)
    return bundle.collate_fn([bundle.test[i] for i in range(count)])[0]


def translator_case(run: Run) -> tuple[list[Contender], dict[str, dict[str, float]], list[str]]:
    fp32, int8, notes = export_int8(run)
    source = test_sources(run, GEN_BATCH)
    models = {"eager fp32 (KV cache)": run, "onnxruntime fp32": onnx_run(run, fp32),
              "onnxruntime int8": onnx_run(run, int8)}
    ao_run, why = torch_ao_int8(run, source)
    if ao_run is None:
        notes.append(why)
        print(f"  {why}", flush=True)
    else:
        models["torch.ao int8 (eager)"] = ao_run
    quality = {name: translation_quality(r) for name, r in models.items()}
    contenders = [Contender(name, generation_step(r.model, source), GEN_BATCH * NEW_TOKENS)
                  for name, r in models.items()]
    return contenders, quality, notes


def verdict(row: dict[str, Any], reference: dict[str, Any], fastest_fp32: float) -> str:
    """"ship" when ``row`` loses at most `MAX_DROP` points of quality against ``reference`` and beats
    the fastest fp32 contender (``fastest_fp32`` items/s), else "do not ship (why)"."""
    drop = reference["points"] - row["points"]
    reasons = ([f"quality drops {drop:.2f} points > {MAX_DROP}"] if drop > MAX_DROP else []) + \
              ([f"not faster ({row['items_per_s']:.1f} vs {fastest_fp32:.1f}/s fp32)"]
               if row["items_per_s"] <= fastest_fp32 else [])
    return "ship" if not reasons else f"do not ship ({'; '.join(reasons)})"


def report_case(name: str, contenders: list[Contender], quality: dict[str, dict[str, float]],
                repeats: int, max_wait: float) -> list[dict[str, Any]]:
    """Time ``contenders``, join each row with its quality, speed-ups and verdict; print the table."""
    rows = summarize(contenders, measure(contenders, repeats, warmup=1, quiet_cores=QUIET_CORES,
                                         max_wait=max_wait), QUIET_CORES)
    metric = "accuracy_pct" if name == "classifier" else "bleu"
    for row in rows:
        row.update(quality[row["name"]], points=quality[row["name"]][metric])
        row["quality"] = ", ".join(f"{k} {v:.4g}" for k, v in quality[row["name"]].items())
    fp32 = [row for row in rows if "fp32" in row["name"]]
    fastest = max(row["items_per_s"] for row in fp32)
    reference = next(row for row in fp32 if row["name"] == "onnxruntime fp32")
    for row in rows:
        row["speedup_vs_fp32"] = row["items_per_s"] / fastest
        row["speedup"] = f"{row['speedup_vs_fp32']:.2f}x"
        row["verdict"] = verdict(row, reference, fastest) if "int8" in row["name"] else "-"
        row["quality_drop_points"] = reference["points"] - row["points"]
    unit = f"images/s, batch {IMAGE_BATCH}" if name == "classifier" else \
        f"tokens/s, greedy, batch {GEN_BATCH}, {NEW_TOKENS} new tokens"
    print_table(rows, COLUMNS, f"\n{name} ({CONFIGS[name]}; items = {unit}; speed-up against the fastest fp32)")
    if warning := noisy_warning(rows):
        print(warning)
    return rows


def bench_session(path: str | Path, threads: int, quiet: bool = False):
    """`edh.export.onnx.session` with ``threads`` intra-op threads that sleep, not spin, between runs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4 if quiet else 3
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=7)
    parser.add_argument("--runs", default=None,
                        help="folder of the runs: DIR/classifier, DIR/translator are reused when they hold a run, "
                             "else trained there (default: a temporary folder, trained anew)")
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    max_wait = 0.0 if args.quick else args.max_wait
    from edh.export import onnx as edh_onnx

    edh_onnx.session = lambda path, threads_=None, quiet=False: bench_session(path, threads_ or threads, quiet)
    others_before = others_cores(1.0)
    env = environment()
    import onnxruntime

    env["onnxruntime"] = onnxruntime.__version__
    print(f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, {threads} threads, {env['cpu']}; "
          f"{repeats} round-robin repeats, medians; other processes used {others_before:.2f} cores", flush=True)
    report: dict[str, Any] = {"environment": env, "threads": threads, "repeats": repeats, "quick": args.quick,
                              "max_quality_drop_points": MAX_DROP, "cases": {}}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.runs) if args.runs else Path(scratch)
        for name in args.only:
            run, seconds = trained_run(name, root / name, args.quick)
            case = classifier_case if name == "classifier" else translator_case
            contenders, quality, notes = case(run)
            rows = report_case(name, contenders, quality, repeats, max_wait)
            report["cases"][name] = {"config": f"configs/{CONFIGS[name]}", "train_seconds": seconds,
                                     "export_notes": notes, "rows": rows}
    others_after = others_cores(1.0)
    quiet = max(others_before, others_after) <= QUIET_CORES
    report["others_cores"] = {"before": others_before, "after": others_after, "quiet": quiet}
    print("\nverdicts:")
    for name, case in report["cases"].items():
        for row in case["rows"]:
            if "int8" in row["name"]:
                print(f"  {name} {row['name']}: {row['verdict']}")
        for note in case["export_notes"]:
            if "torch.ao" in note or "FAILED" in note:
                print(f"  {name}: {note}")
    print(f"machine {'quiet' if quiet else 'BUSY'}: other processes used {others_before:.2f} cores before, "
          f"{others_after:.2f} after (quiet: <= {QUIET_CORES})")
    print(f"wrote {write_json('int8', report)}")


if __name__ == "__main__":
    main()
