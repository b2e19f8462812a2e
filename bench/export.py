"""Eager PyTorch vs the exported ONNX graph in onnxruntime, per model family: latency at batch 1 and 8,
and the max abs difference of the outputs.

Run: ``python bench/export.py [--repeats N] [--quick] [--threads T] [--families classifier,unet,...]``.

Each family is a run folder built from a run spec with untrained weights (no training: latency does
not depend on the weights; BatchNorm statistics are randomised so folding changes them), exported
with `edh.export.runs.export_run` (BatchNorm folded, checked with onnxruntime). Contenders per
batch size: ``eager`` (the run's model as loaded, ``torch.inference_mode()``), ``eager prepared``
(`edh.utils.perf.prepare_for_inference`: BatchNorm folded + channels_last) and ``onnxruntime`` (CPU
execution provider, same thread count). Detectors are timed on raw head outputs and, for
``fcos+nms`` / ``faster_rcnn``, on detections (post-processing included on both sides).
The translator is timed on greedy generation of 16 new tokens (encoder + 16 decoder steps).
All contenders of one group run round-robin (`common.measure`); medians are reported and written to
``bench/results/export.json``. ``cpu_ms`` is the median CPU time of this process per call (robust to other
processes on a shared machine; the compute time with ``--threads 1``). ``max_abs_diff`` is measured at
the timed batch on the timed inputs.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from common import (Contender, apply_threads, base_parser, environment, measure, noisy_warning, print_table,
                    seed_everything, summarize, write_json)

from edh.export.flatten import flatten
from edh.export.runs import export_run, onnx_run
from edh.ops.generation import generate
from edh.utils.perf import prepare_for_inference, to_channels_last

SCENES = {"name": "scenes", "image_size": 128, "num_train": 16, "num_val": 8, "num_test": 16, "batch_size": 8}
PYRAMID = {"encoder": {"name": "resnet18"},
           "decoder": {"name": "fpn", "out_channels": 64, "levels": [2, 3, 4], "extra": "none"}}
FAMILIES: dict[str, dict[str, Any]] = {
    "classifier": {"model": {"encoder": {"name": "resnet18"}, "heads": {"label": {"type": "classification"}}},
                   "data": {"name": "digits", "image_size": 64}},
    "unet": {"model": {"encoder": {"name": "resnet18"},
                       "decoder": {"name": "unet", "decoder_channels": [128, 64, 32, 16, 16]},
                       "heads": {"mask": {"type": "segmentation", "source": "decoder"}}}, "data": SCENES},
    "autoencoder": {"model": {"encoder": {"name": "conv", "channels": [32, 64, 128]},
                              "decoder": {"name": "conv_transpose"}}, "data": {"name": "digits", "image_size": 32}},
    "fcos": {"model": {**PYRAMID, "heads": {"boxes": {"type": "fcos", "source": "decoder", "target": "boxes",
                                                      "num_classes": 10, "num_convs": 2, "norm": "batch"}}},
             "data": SCENES},
    "faster_rcnn": {"model": {**PYRAMID, "heads": {"boxes": {"type": "faster_rcnn", "source": "decoder",
                                                             "target": "boxes", "num_classes": 10,
                                                             "representation_size": 256}}},
                    "data": SCENES},
    "translator": {"model": {"encoder": {"name": "transformer", "preset": "small"},
                             "decoder": {"name": "transformer", "preset": "small"},
                             "heads": {"tokens": {"type": "lm", "source": "decoder"}}},
                   "data": {"name": "numbers", "max_number": 2000, "vocab_size": 400, "batch_size": 32}},
}
COLUMNS = ["name", "ms_per_step", "cpu_ms", "items_per_s", "max_abs_diff", "tokens_equal", "quiet_samples"]
NEW_TOKENS = 16


def make_run(spec: dict[str, Any], path: Path):
    """A run folder for ``spec`` with untrained weights (BatchNorm statistics randomised)."""
    from edh.data.base import build_data
    from edh.utils.io import atomic_write_text
    from edh.core.model import Model
    from edh.workflows.run import load_run, save_weights, write_spec
    from edh.core.spec import parse_run_spec
    from edh.train.resolve import resolve_spec

    spec = parse_run_spec(spec)
    bundle = build_data(spec.data.name, spec.data.options(), spec.data.seed)
    spec = resolve_spec(spec, bundle.info)
    model = Model(spec.model, pretrained=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    path.mkdir(parents=True, exist_ok=True)
    write_spec(path, spec, bundle.info)
    save_weights(path, model)
    for name, text in bundle.files.items():
        atomic_write_text(path / name, text)
    return load_run(path)


def cpu_seconds(step: Callable[[], Any], repeats: int) -> float:
    """Median CPU time (user + system, all of this process's threads) of one ``step``: less affected by
    other processes than wall time when the machine is shared (with ``--threads 1`` it is the compute
    time; with more threads it includes their spinning)."""
    times = []
    for _ in range(repeats):
        before = time.process_time()
        step()
        times.append(time.process_time() - before)
    return statistics.median(times)


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:.2g}"


def _max_diff(a: Any, b: Any) -> float:
    _, left, _ = flatten(a)
    _, right, _ = flatten(b)
    return max((float((x.float() - y.float()).abs().max()) for x, y in zip(left, right) if x.numel()), default=0.0)


def _detections(model: torch.nn.Module, outputs: dict[str, Any]) -> dict[str, Any]:
    return {name: head.predict(outputs[name]) if head.export_postprocess is not None else outputs[name]
            for name, head in model.heads.items()}


def image_groups(family: str, run: Any, folder: Path, batches: list[int]) -> list[tuple[str, list[Contender]]]:
    nms = family == "fcos+nms" or family == "faster_rcnn"
    report = export_run(run, out=folder / f"{family}.onnx", nms=nms)
    exported = onnx_run(run, folder / f"{family}.onnx").model
    eager = run.model.eval()
    prepared = prepare_for_inference(eager)
    size = tuple(run.info.image_size)
    groups = []
    for batch in batches:
        images = torch.randn(batch, run.info.in_channels, *size, generator=torch.Generator().manual_seed(batch))

        def call(model: torch.nn.Module, channels_last: bool = False, post: bool = nms,
                 images: torch.Tensor = images) -> Callable[[], Any]:  # bound now: the loop rebinds `images`
            def step() -> Any:
                with torch.inference_mode():
                    outputs = model(to_channels_last(images) if channels_last else images)
                    return _detections(model, outputs) if post else outputs
            return step

        reference = call(eager)()
        if nms:  # detections: the export check's matched boxes / scores (folding may move a box past a threshold)
            diff, prepared_diff = report.max_abs_diff, "-"
        else:
            diff, prepared_diff = _max_diff(reference, call(exported)()), _max_diff(reference, call(prepared, True)())
        info = {"family": family, "batch": batch}
        groups.append((f"{family} batch {batch}", [
            Contender(f"{family} b{batch} eager", call(eager), batch, {**info, "max_abs_diff": "0"}),
            Contender(f"{family} b{batch} eager prepared", call(prepared, True), batch,
                      {**info, "max_abs_diff": _fmt(prepared_diff)}),
            Contender(f"{family} b{batch} onnxruntime", call(exported), batch, {**info, "max_abs_diff": _fmt(diff)}),
        ]))
    return groups


def translator_groups(run: Any, folder: Path, batches: list[int]) -> list[tuple[str, list[Contender]]]:
    report = export_run(run, out=folder / "translator.onnx")
    exported = onnx_run(run, folder / "translator.onnx").model
    vocab = run.info.extra["vocab_size"]
    groups = []
    for batch in batches:
        source = torch.randint(4, vocab, (batch, 12), generator=torch.Generator().manual_seed(batch))
        source[:, -1] = run.model.decoder.eos_id

        def call(model: Any, source: torch.Tensor = source) -> Callable[[], Any]:  # bound now, as above
            return lambda: generate(model, source, beam_size=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)

        same = torch.equal(call(run.model)().tokens, call(exported)().tokens)
        info = {"family": "translator", "batch": batch, "tokens_equal": same}
        groups.append((f"translator batch {batch}", [
            Contender(f"translator b{batch} eager greedy", call(run.model), batch * NEW_TOKENS,
                      {**info, "max_abs_diff": "0"}),
            Contender(f"translator b{batch} onnxruntime greedy", call(exported), batch * NEW_TOKENS,
                      {**info, "max_abs_diff": _fmt(report.max_abs_diff)}),
        ]))
    return groups


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=7)
    parser.add_argument("--families", default="classifier,unet,autoencoder,fcos,fcos+nms,faster_rcnn,translator")
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    import onnxruntime  # noqa: F401  (fail early when missing)

    from edh.export import onnx as edh_onnx

    session = edh_onnx.session

    def threaded(path, threads_=None):  # onnxruntime gets the same thread count as torch
        return session(path, threads_ or threads)

    edh_onnx.session = threaded
    repeats = 2 if args.quick else args.repeats
    batches = [1, 8]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs: dict[str, Any] = {}
        for family in args.families.split(","):
            base = "fcos" if family == "fcos+nms" else family
            seed_everything(0)
            if base not in runs:
                runs[base] = make_run(copy.deepcopy(FAMILIES[base]), folder / base)
            if family == "translator":
                groups = translator_groups(runs[base], folder, batches)
            else:
                groups = image_groups(family, runs[base], folder, batches)
            for title, contenders in groups:
                samples = measure(contenders, repeats=repeats, warmup=1)
                group_rows = summarize(contenders, samples)
                for row, contender in zip(group_rows, contenders):
                    row["cpu_ms"] = 1000 * cpu_seconds(contender.step, repeats)
                print_table(group_rows, COLUMNS, title)
                if warning := noisy_warning(group_rows):
                    print(warning)
                rows += group_rows
    path = write_json("export", {"environment": environment(), "threads": threads, "rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
