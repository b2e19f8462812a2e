"""`evaluate_run`: a run's metrics on its test (or val) split, with each head's report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edh.workflows.evaluation import Evaluation
from edh.workflows.run import Run


def evaluate_run(run: Run, split: str = "test", out_dir: str | Path | None = None, batch_size: int | None = None,
                 progress: bool = True) -> Evaluation:
    """Run the model over ``split`` and compute every task's test metrics (plots go to ``out_dir``).

    A model that generates (a step decoder with a generating head) is scored on generated text
    (`edh.workflows.translate.evaluate_translation`); any other on its tasks' metrics (`Model.tasks`).
    """
    from edh.ops.generation import generates

    if generates(run.model):  # BLEU / chrF / exact match need generated text, not logits
        from edh.workflows.translate import evaluate_translation

        return evaluate_translation(run, split, batch_size, progress, out_dir=out_dir)
    from torch.utils.data import DataLoader

    from edh.data.base import build_data
    from edh.train.batch import task_targets, unpack_batch

    spec = run.spec
    bundle = build_data(spec.data.name, spec.data.options(), spec.data.seed)
    dataset = {"test": bundle.test, "val": bundle.val, "train": bundle.train}[split]
    loader = DataLoader(dataset, batch_size=batch_size or spec.data.batch_size, collate_fn=bundle.collate_fn)
    model = run.model.eval()
    tasks = model.tasks()
    metrics = {name: head.make_metrics("test") for name, head in tasks.items()}
    count = 0
    with torch.inference_mode():
        for batch in _progress(loader, f"evaluating {split}", progress):
            inputs, targets, context = unpack_batch(batch)
            outputs = model(inputs, **context)
            count += len(inputs) if hasattr(inputs, "__len__") else 1
            for name, head in tasks.items():
                if metrics[name] is not None:
                    head.update_metrics(metrics[name], outputs[name], task_targets(model, name, head, targets))
    result = Evaluation(split, count)
    for name, head in tasks.items():
        if metrics[name] is None:
            continue
        scalars, lines = head.summarize(metrics[name].compute(), Path(out_dir) if out_dir else None)
        result.metrics[name] = scalars
        result.reports[name] = lines
    return result


def _progress(iterable: Any, description: str, enabled: bool):
    if not enabled:
        yield from iterable
        return
    from rich.progress import track

    yield from track(iterable, description=description, transient=True)
