"""What each speed option of an edh run spec does, per model family: inference forward and train step.

Run: ``python bench/speed_options.py [--repeats N] [--quick] [--threads T] [--max-wait S]
[--families classifier,unet,autoencoder,fcos,faster_rcnn,translator]``.

Each family is a run folder built from `export.FAMILIES` with untrained weights (`export.make_run`); the
inputs and targets are the first batch of 8 of the run's training data (at the family's data image size).

Image families (classifier, unet, autoencoder, fcos, faster_rcnn), all contenders in one round-robin group:

- inference forward (``torch.inference_mode()``, eval mode, raw head outputs): ``eager fp32`` (the model
  as loaded), ``channels_last`` (weights and inputs), ``prepared`` (`edh.utils.perf.prepare_for_inference`:
  channels_last + BatchNorm folded), ``bf16 autocast`` (prepared, under `edh.utils.perf.autocast("cpu")`),
  ``compile (freezing)`` (`edh.utils.perf.InferenceModel` with ``compile=True``: the prepared model through
  torch.compile with inductor's freezing pass, as ``edh predict / eval --compile``; ``compile_s`` is
  the compile + first call time; a compile that fails or falls back to eager is a row with its error);
- train step (train mode: forward with targets, the heads' losses as training weighs them
  (`edh.train.task.combine_losses` over `Model.tasks`: a model without heads is scored by its decoder's objective), backward,
  AdamW step): ``train fp32``, ``train channels_last``, ``train bf16 autocast`` (forward + loss under autocast).

Translator: greedy generation of 16 new tokens at batch 8 (`edh.ops.generation.generate`, eos forbidden
until then) with ``fp32`` weights, under ``bf16 autocast``, and with ``bf16 weights``
(``copy.deepcopy(model).to(torch.bfloat16)``); train step ``fp32`` and ``bf16 autocast``.

Every option runs once before timing; one that raises becomes a row with its error (an edh problem to
report) instead of a timing. Ratios are items/s over the first row of the same kind (``eager fp32`` /
``greedy fp32`` for inference, ``train fp32`` for train steps), of medians (and of best samples).
Medians are printed and written to ``bench/results/speed_options.json``.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (Contender, apply_threads, base_parser, environment, format_ratio, measure, noisy_warning,
                    print_table, ratio, seed_everything, summarize, write_json)
from export import FAMILIES, make_run

from edh.ops.generation import generate
from edh.utils.perf import InferenceModel, autocast, prepare_for_inference, to_channels_last

BATCH, NEW_TOKENS = 8, 16
COLUMNS = ["name", "ms_per_step", "items_per_s", "best_items_per_s", "compile_s", "quiet_samples", "error"]
Make = Callable[[], tuple[Callable[[], Any], dict[str, Any]]]  # builds a step (and its info) to time


def first_batch(run: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(inputs, targets, context)``: the first ``BATCH`` items of the run's training split, collated."""
    from torch.utils.data import DataLoader

    from edh.data.base import build_data
    from edh.train.batch import unpack_batch

    bundle = build_data(run.spec.data.name, run.spec.data.options(), run.spec.data.seed)
    return unpack_batch(next(iter(DataLoader(bundle.train, batch_size=BATCH, collate_fn=bundle.collate_fn))))


def train_step(run: Any, batch: tuple[Any, dict, dict], channels_last: bool = False, bf16: bool = False) -> Make:
    """A copy of the run's model trained one AdamW step per call on ``batch`` (the loss as `EdhTask` computes it)."""
    from edh.train.task import combine_losses

    def make() -> tuple[Callable[[], Any], dict[str, Any]]:
        inputs, targets, context = batch
        model = copy.deepcopy(run.model).train().bind_data(run.info)
        if channels_last:
            model, inputs = model.to(memory_format=torch.channels_last), to_channels_last(inputs)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> float:
            with autocast("cpu", enabled=bf16):
                outputs = model(inputs, targets=targets, **context)
                loss, _ = combine_losses(model, outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.item()

        return step, {}
    return make


def forward(model: torch.nn.Module, images: torch.Tensor, bf16: bool = False) -> Callable[[], Any]:
    def step() -> Any:
        with torch.inference_mode(), autocast("cpu", enabled=bf16):
            return model(images)
    return step


class _Messages(logging.Handler):
    """Keeps the messages logged by `edh.utils.perf` (maybe_compile's fallback warnings)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def compiled_forward(eager: torch.nn.Module, images: torch.Tensor) -> Make:
    """``edh predict / eval --compile``: `InferenceModel` with torch.compile (freezing), compiled by a first
    call (timed: ``compile_s``); raises on a fallback to eager."""
    def make() -> tuple[Callable[[], Any], dict[str, Any]]:
        handler, logger = _Messages(), logging.getLogger("edh.utils.perf")
        logger.addHandler(handler)
        try:
            begin = time.perf_counter()
            model = InferenceModel(eager, compile=True)
            step = forward(model, images)
            step()
            seconds = time.perf_counter() - begin
        finally:
            logger.removeHandler(handler)
        if not model.compiled:  # maybe_compile fell back to eager (it logged why)
            raise RuntimeError(handler.messages[-1] if handler.messages else "maybe_compile returned eager")
        return step, {"compile_s": round(seconds, 1)}
    return make


def image_plan(run: Any) -> list[tuple[str, Make, int]]:
    batch = first_batch(run)
    images = batch[0]
    eager = run.model.eval()
    channels_last = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    prepared = prepare_for_inference(eager)
    fast_images = to_channels_last(images)
    return [
        ("eager fp32", lambda: (forward(eager, images), {}), BATCH),
        ("channels_last", lambda: (forward(channels_last, fast_images), {}), BATCH),
        ("prepared", lambda: (forward(prepared, fast_images), {}), BATCH),
        ("bf16 autocast", lambda: (forward(prepared, fast_images, bf16=True), {}), BATCH),
        ("compile (freezing)", compiled_forward(eager, fast_images), BATCH),
        ("train fp32", train_step(run, batch), BATCH),
        ("train channels_last", train_step(run, batch, channels_last=True), BATCH),
        ("train bf16 autocast", train_step(run, batch, bf16=True), BATCH),
    ]


def translator_plan(run: Any) -> list[tuple[str, Make, int]]:
    batch = first_batch(run)
    source = batch[0]
    fp32 = run.model.eval()
    bf16_weights = copy.deepcopy(fp32).to(torch.bfloat16)

    def greedy(model: torch.nn.Module, bf16: bool = False) -> Make:
        def step() -> Any:
            with torch.inference_mode(), autocast("cpu", enabled=bf16):
                return generate(model, source, beam_size=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        return lambda: (step, {})

    tokens = int(batch[1]["tokens"].numel())  # target tokens (padding included) per train step
    return [
        ("greedy fp32", greedy(fp32), BATCH * NEW_TOKENS),
        ("greedy bf16 autocast", greedy(fp32, bf16=True), BATCH * NEW_TOKENS),
        ("greedy bf16 weights", greedy(bf16_weights), BATCH * NEW_TOKENS),
        ("train fp32", train_step(run, batch), tokens),
        ("train bf16 autocast", train_step(run, batch, bf16=True), tokens),
    ]


def checked(plan: list[tuple[str, Make, int]], family: str) -> tuple[list[Contender], list[dict[str, Any]]]:
    """Contenders whose step ran once without error, and an error row for each of the others."""
    contenders, failures = [], []
    for name, make, items in plan:
        try:
            step, info = make()
            step()
        except Exception as error:  # noqa: BLE001 - an option that fails is a result, not a crash
            message = " ".join(f"{type(error).__name__}: {error}".split())
            print(f"{family} {name}: FAILED {message[:300]}", flush=True)
            failures.append({"name": name, "family": family, "error": message[:500]})
            continue
        contenders.append(Contender(name, step, items, {"family": family, **info}))
    return contenders, failures


def family_ratios(family: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """items/s of each timed row over the first row of its kind (inference/generation, or train)."""
    out, baselines = [], {}
    for row in rows:
        kind = "train" if row["name"].startswith("train") else "inference"
        baselines.setdefault(kind, row)  # the first row of its kind, timed or not
        base = baselines[kind]
        if row is base or "items_per_s" not in row or "items_per_s" not in base:
            continue
        out.append(ratio(f"{family}: {row['name']} / {base['name']}", row["items_per_s"] / base["items_per_s"],
                         best=row["best_items_per_s"] / base["best_items_per_s"]))
    return out


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=7)
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma list of " + ", ".join(FAMILIES))
    args = parser.parse_args()
    families = args.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    threads = apply_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    if args.quick:
        args.max_wait = 0.0
    env = environment()
    print(f"torch {env['torch']}, {threads} threads, {env['cpu']}; batch {BATCH}, {repeats} round-robin repeats, "
          "medians", flush=True)
    report: dict[str, Any] = {"environment": env, "batch": BATCH, "repeats": repeats, "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            seed_everything(0)
            run = make_run(copy.deepcopy(FAMILIES[family]), Path(tmp) / family)
            plan = translator_plan(run) if family == "translator" else image_plan(run)
            contenders, failures = checked(plan, family)
            samples = measure(contenders, repeats, calls=1, warmup=0 if args.quick else 1, max_wait=args.max_wait)
            order = [name for name, _, _ in plan]
            rows = sorted(summarize(contenders, samples) + failures, key=lambda row: order.index(row["name"]))
            size = "x".join(map(str, run.info.image_size)) if run.info.image_size else None
            items = "tokens" if family == "translator" else "images"
            print_table(rows, COLUMNS, f"\n{family}: batch {BATCH}" + (f", {size} images" if size else "")
                        + f" (items = {items})")
            if warning := noisy_warning(rows):
                print(warning)
            ratios = family_ratios(family, rows)
            for r in ratios:
                print(format_ratio(r))
            report["families"][family] = {"image_size": size, "rows": rows, "ratios": ratios}
            del run, plan, contenders, samples
    path = write_json("speed_options", report)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
