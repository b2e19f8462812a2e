"""`evaluate_run`: a run's metrics on its test (or val) split, with each head's report.

The metrics are computed first and plots written after (`write_plots`), so a plot that cannot be
written (a read-only run folder) never loses the metrics: ``edh eval`` prints them, then writes the
plots, and a plot it cannot write is a warning naming the file (exit code 0).

Before anything is evaluated, the data rebuilt from disk is compared with what the run trained on
(`edh.workflows.data_check`): a changed dataset is a `DataError` listing the changes, unless
``allow_changed_data``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edh.workflows.evaluation import Evaluation
from edh.workflows.run import Run

log = logging.getLogger("edh")


@dataclass
class RunEvaluation(Evaluation):
    """An `Evaluation` that keeps each head's computed metric values (for `write_plots`) and what
    could not be written (``problems``: one line per file)."""

    values: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    problems: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


def evaluate_run(run: Run, split: str = "test", out_dir: str | Path | None = None, batch_size: int | None = None,
                 progress: bool = True, allow_changed_data: bool = False, tile: int | None = None,
                 overlap: float | None = None) -> Evaluation:
    """Run the model over ``split`` and compute every task's test metrics (plots go to ``out_dir``).

    A model that generates (a step decoder with a generating head) is scored on generated text
    (`edh.workflows.translate.evaluate_translation`); any other on its tasks' metrics (`Model.tasks`).
    ``allow_changed_data``: evaluate even when the data on disk is not what the run trained on
    (a warning lists the changes). A plot that cannot be written is logged and listed in
    ``problems``, never raised. ``tile``: each image is evaluated at its own size, one image per
    forward, on overlapping ``tile x tile`` windows (`edh.ops.tiling`; ``overlap`` default 0.25);
    every head must declare a tiling, checked before any data is read.
    """
    from edh.ops.generation import generates
    from edh.workflows.data_check import check_run_info, evaluation_split, rebuild_data
    from edh.workflows.predict import tiled_call

    check_run_info(run, allow_changed_data)
    tiled = tiled_call(run, run.model.eval(), run.model.tasks(), tile, overlap)
    if generates(run.model):  # BLEU / chrF / exact match need generated text, not logits
        from edh.workflows.translate import evaluate_translation

        problem = _unwritable(out_dir)
        result = evaluate_translation(run, split, batch_size, progress, out_dir=None if problem else out_dir)
        if problem:
            log.warning("%s; the translations file is not written", problem)
        return result
    from torch.utils.data import DataLoader

    from edh.train.batch import task_targets, unpack_batch

    spec = run.spec
    bundle = rebuild_data(run)  # a text run's own tokenizer
    dataset = evaluation_split(run, bundle, split, allow_changed_data)
    if tiled is not None:
        dataset = native_size(run, bundle, dataset, split)
    loader = DataLoader(dataset, batch_size=1 if tiled is not None else batch_size or spec.data.batch_size,
                        collate_fn=bundle.collate_fn)
    model = run.model.eval()
    tasks = model.tasks()
    metrics = {name: head.make_metrics("test") for name, head in tasks.items()}
    count = 0
    with torch.inference_mode():
        for batch in _progress(loader, f"evaluating {split}" + (f" on {tile}x{tile} tiles" if tile else ""),
                               progress):
            inputs, targets, context = unpack_batch(batch)
            outputs = tiled(inputs) if tiled is not None else model(inputs, **context)
            count += len(inputs) if hasattr(inputs, "__len__") else 1
            for name, head in tasks.items():
                if metrics[name] is not None:
                    head.update_metrics(metrics[name], outputs[name], task_targets(model, name, head, targets))
    result = RunEvaluation(split, count)
    for name, head in tasks.items():
        if metrics[name] is None:
            continue
        values = metrics[name].compute()
        scalars, lines = head.summarize(values, None)
        result.values[name] = values
        result.metrics[name] = scalars
        result.reports[name] = lines
    if out_dir is not None:
        for problem in write_plots(run, result, out_dir):
            log.warning("%s", problem)
    return result


def native_size(run: Run, bundle: Any, dataset: Any, split: str) -> Any:
    """``dataset``'s samples read at their own size: the run's files of the split read again without
    the resize to ``image_size`` (`DataBundle.replay` with no image size), where the data is files;
    otherwise the dataset as it is (in-memory data: its images have no other size), with a note."""
    import dataclasses

    if not run.info.image_size:
        return dataset
    ids = getattr(dataset, "sample_ids", None)
    if bundle.replay is None or not callable(ids):
        log.info("%s: the %s split of %s has no image files to read at their own size; it is evaluated at "
                 "data.image_size %s", run.path, split, run.spec.data.name, "x".join(map(str, run.info.image_size)))
        return dataset
    return bundle.replay(list(ids()), dataclasses.replace(run.info, image_size=None))


def write_plots(run: Run, result: Evaluation, out_dir: str | Path) -> list[str]:
    """Each head's plots (confusion matrix...) of ``result`` into ``out_dir``; their report lines are
    added to ``result.reports`` (and ``result.written``). Returns a line per plot that could not be
    written, naming the file and why (also kept in ``result.problems``); nothing is raised."""
    values = getattr(result, "values", None) or {}
    problems: list[str] = []
    tasks = run.model.tasks()
    for name, computed in values.items():
        head = tasks.get(name)
        if head is None:
            continue
        before = list(result.reports.get(name, []))
        try:
            _, lines = head.summarize(computed, Path(out_dir))
        except OSError as error:
            problems.append(f"could not write the plot of head {name!r}: {_describe(error, out_dir)}")
            continue
        new = [line for line in lines if line not in before]
        result.reports[name] = before + new
        if hasattr(result, "written"):
            result.written.extend(new)
    if hasattr(result, "problems"):
        result.problems.extend(problems)
    return problems


def _describe(error: OSError, out_dir: str | Path) -> str:
    """``FILE: why``; a temporary file of an atomic write (``.NAME[.PID@HOST].XXXX.tmp``) is named by its target."""
    target = error.filename or out_dir
    if error.filename:
        match = re.fullmatch(r"\.(.+?)\.(?:\d+@[A-Za-z0-9_-]*\.)?[^.]+\.tmp", Path(error.filename).name)
        if match:
            target = Path(error.filename).parent / match.group(1)
    return f"{target}: {error.strerror or error}"


def _unwritable(out_dir: str | Path | None) -> str | None:
    if out_dir is None:
        return None
    folder = Path(out_dir)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if os.access(folder, os.W_OK):
        return None
    return f"cannot write into {out_dir}: {'permission denied' if folder.exists() else 'no such folder'}"


def _progress(iterable: Any, description: str, enabled: bool):
    if not enabled:
        yield from iterable
        return
    from rich.progress import track

    yield from track(iterable, description=description, transient=True)
