"""`predict_images`: a run's predictions for image files, printed and (per head) drawn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edh.run import Run


@dataclass
class ImagePrediction:
    path: Path
    lines: dict[str, str]


def load_inputs(run: Run, paths: list[str | Path]) -> torch.Tensor:
    """Read, resize and normalise image files as the run's data was: ``(N, C, H, W)``."""
    from edh.data.files import read_image
    from edh.data.transforms import eval_transform

    info = run.info
    transform = eval_transform(info.image_size, info.mean, info.std)
    images = [transform(read_image(p, info.in_channels)) for p in paths]
    sizes = {tuple(i.shape[-2:]) for i in images}
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes {sorted(sizes)} and the run has no fixed image_size; "
                         "predict them one at a time")
    return torch.stack(images)


def predict_images(run: Run, paths: list[str | Path], out_dir: str | Path | None = None, top_k: int | None = None,
                   batch_size: int = 16) -> tuple[list[ImagePrediction], list[Path]]:
    """Predict every head for each image; heads that draw write into ``out_dir``."""
    model = run.model.eval()
    results: list[ImagePrediction] = []
    written: list[Path] = []
    for start in range(0, len(paths), batch_size):
        chunk = [Path(p) for p in paths[start:start + batch_size]]
        inputs = load_inputs(run, chunk)
        with torch.inference_mode():
            outputs = model(inputs)
        lines: list[dict[str, str]] = [{} for _ in chunk]
        for name, head in model.heads.items():
            options: dict[str, Any] = {"top_k": top_k} if top_k else {}
            prediction = head.predict(outputs[name], input_size=tuple(inputs.shape[-2:]), **options)
            for index in range(len(chunk)):
                lines[index][name] = head.format_prediction(prediction, index)
            if out_dir is not None:
                written += head.write_predictions(prediction, inputs, chunk, Path(out_dir))
        results += [ImagePrediction(p, l) for p, l in zip(chunk, lines)]
    return results, written
