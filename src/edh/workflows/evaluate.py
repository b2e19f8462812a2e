"""`evaluate_run`: a run's metrics on its test (or val) split, with each head's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edh.workflows.run import Run


@dataclass
class Evaluation:
    split: str
    count: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    reports: dict[str, list[str]] = field(default_factory=dict)


def evaluate_run(run: Run, split: str = "test", out_dir: str | Path | None = None, batch_size: int | None = None,
                 progress: bool = True) -> Evaluation:
    """Run the model over ``split`` and compute every head's test metrics (plots go to ``out_dir``)."""
    from edh.ops.generation import is_seq2seq

    if is_seq2seq(run.model):  # translation: BLEU / chrF / exact match need generated text, not logits
        from edh.workflows.translate import evaluate_translation

        return evaluate_translation(run, split, batch_size, progress, out_dir=out_dir)
    from torch.utils.data import DataLoader

    from edh.data.base import build_data
    from edh.train.batch import unpack_batch

    spec = run.spec
    bundle = build_data(spec.data.name, spec.data.options(), spec.data.seed)
    dataset = {"test": bundle.test, "val": bundle.val, "train": bundle.train}[split]
    loader = DataLoader(dataset, batch_size=batch_size or spec.data.batch_size, collate_fn=bundle.collate_fn)
    model = run.model.eval()
    metrics = {name: head.make_metrics("test") for name, head in model.heads.items()}
    reconstruction = None
    if not model.heads:
        from edh.train.reconstruction import make_reconstruction_loss

        reconstruction = make_reconstruction_loss(spec, run.info)
    count = 0
    with torch.inference_mode():
        for batch in _progress(loader, f"evaluating {split}", progress):
            inputs, targets, context = unpack_batch(batch)
            if reconstruction is not None:  # a model without heads reconstructs its inputs
                targets = {"inputs": inputs, **targets}
            outputs = model(inputs, **context)
            count += len(inputs) if hasattr(inputs, "__len__") else 1
            for name, head in model.heads.items():
                if metrics[name] is not None:
                    key = model.head_specs[name].target or name
                    head.update_metrics(metrics[name], outputs[name], head.select_targets(targets, key))
            if reconstruction is not None:
                reconstruction.update_metrics(outputs["decoder"], targets)
    result = Evaluation(split, count)
    for name, head in model.heads.items():
        if metrics[name] is None:
            continue
        scalars, lines = head.summarize(metrics[name].compute(), Path(out_dir) if out_dir else None)
        result.metrics[name] = scalars
        result.reports[name] = lines
    if reconstruction is not None:
        result.metrics["decoder"] = {k: float(v) for k, v in reconstruction.compute_metrics().items()}
    return result


def _progress(iterable: Any, description: str, enabled: bool):
    if not enabled:
        yield from iterable
        return
    from rich.progress import track

    yield from track(iterable, description=description, transient=True)
