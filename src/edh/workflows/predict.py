"""`predict_inputs`: a run's predictions for the user's inputs (image files, sentences), printed and drawn.

Every task of the model (`Model.tasks`) predicts through the Head contract: ``predict``, then
``format_prediction`` for the printed line, ``write_predictions`` for pictures and
``prediction_records`` for JSON files. Inputs are read by the reader of the run's input kind
(`edh.workflows.inputs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edh.workflows.inputs import reader_for
from edh.workflows.run import Run


@dataclass
class Prediction:
    """What each task predicted for one input (``source``: its path, or the sentence)."""

    source: Any
    lines: dict[str, str]


def predict_inputs(run: Run, items: list[Any], out_dir: str | Path | None = None, top_k: int | None = None,
                   batch_size: int = 16, allow_changed_data: bool = False) -> tuple[list[Prediction], list[Path]]:
    """Predict every task for each item; tasks that draw write into ``out_dir``, and tasks that give
    records (detection: COCO results) get them gathered into ``out_dir/<task>.json``.

    A run whose images keep their own sizes (no ``image_size``) predicts one at a time. Inputs are
    preprocessed as in training, from the run's ``data.json`` checked against its fingerprint: an
    edited ``data.json`` is a `DataError`; with ``allow_changed_data`` a warning, and the training
    values are used (as ``edh eval`` does).
    """
    from edh.workflows.data_check import check_run_info

    check_run_info(run, allow_changed_data)
    reader = reader_for(run)
    model = run.model.eval()
    tasks = model.tasks()
    results: list[Prediction] = []
    written: list[Path] = []
    records: dict[str, list[dict[str, Any]]] = {}
    if reader.one_at_a_time(run):
        batch_size = 1
    options: dict[str, Any] = {"top_k": top_k} if top_k else {}
    for start in range(0, len(items), batch_size):
        chunk = [Path(p) if reader.pictures else p for p in items[start:start + batch_size]]
        inputs = reader.read(run, chunk)
        size = tuple(inputs.shape[-2:]) if inputs.ndim == 4 else None
        with torch.inference_mode():
            outputs = model(inputs)
        lines: list[dict[str, str]] = [{} for _ in chunk]
        for name, head in tasks.items():
            prediction = head.predict(outputs[name], input_size=size, inputs=inputs, **options)
            for index in range(len(chunk)):
                lines[index][name] = head.format_prediction(prediction, index)
            if out_dir is not None and reader.pictures:
                written += head.write_predictions(prediction, inputs, chunk, Path(out_dir))
                records.setdefault(name, []).extend(head.prediction_records(prediction, chunk, size, run.info))
        results += [Prediction(p, l) for p, l in zip(chunk, lines)]
    for name, rows in records.items():
        if rows:
            from edh.utils.io import atomic_write_text

            written.append(atomic_write_text(Path(out_dir) / f"{name}.json", json.dumps(rows)))
    return results, written


def sample_images(run: Run, count: int, out_dir: str | Path, seed: int = 0) -> Path:
    """Draw ``count`` images from a variational decoder's prior into ``out_dir/samples.png``."""
    from edh.utils.plots import image_rows_png

    decoder = run.model.decoder
    if decoder is None or not decoder.can_sample:
        raise ValueError("--sample needs a run whose decoder samples from a prior, e.g. a variational autoencoder "
                         "(decoder: {name: conv_transpose, latent_dim: N, variational: true, image_size: S})")
    if count < 1:
        raise ValueError(f"--sample takes a positive count, got {count}")
    images = decoder.eval().sample(count, torch.Generator().manual_seed(seed))
    return image_rows_png([("samples from the prior", images)], run.info.mean, run.info.std,
                          Path(out_dir) / "samples.png")
