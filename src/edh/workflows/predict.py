"""`predict_images`: a run's predictions for image files, printed and (per head) drawn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edh.workflows.run import Run


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
    """Predict every head for each image; heads that draw write into ``out_dir``, and heads that
    give records (detection: COCO results) get them gathered into ``out_dir/<head>.json``.

    A run whose data keeps each image's own size (no ``image_size``) predicts one image at a time.
    """
    model = run.model.eval()
    results: list[ImagePrediction] = []
    written: list[Path] = []
    records: dict[str, list[dict[str, Any]]] = {}
    reconstructed: list[tuple[torch.Tensor, torch.Tensor]] = []
    if run.info.image_size is None and run.info.input_kind == "image":
        batch_size = 1  # images keep their own sizes, which may differ
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
                records.setdefault(name, []).extend(
                    head.prediction_records(prediction, chunk, tuple(inputs.shape[-2:]), run.info))
        if not model.heads:  # an autoencoder: the decoder's output is the result
            from edh.train.reconstruction import psnr_lines

            for index, line in enumerate(psnr_lines(run.info, outputs["decoder"], inputs)):
                lines[index]["decoder"] = line
            reconstructed.append((inputs, outputs["decoder"][0][..., :inputs.shape[-2], :inputs.shape[-1]]))
        results += [ImagePrediction(p, l) for p, l in zip(chunk, lines)]
    if reconstructed and out_dir is not None:
        written.append(reconstruction_grid(run, reconstructed, Path(out_dir) / "reconstructions.png"))
    for name, rows in records.items():
        if rows:
            import json

            from edh.utils.io import atomic_write_text

            written.append(atomic_write_text(Path(out_dir) / f"{name}.json", json.dumps(rows)))
    return results, written


def reconstruction_grid(run: Run, pairs: list[tuple[torch.Tensor, torch.Tensor]], path: Path, columns: int = 8) -> Path:
    """Inputs beside their reconstructions: rows of ``columns`` inputs, each above its reconstructions."""
    from edh.train.reconstruction import image_grid_png

    inputs = torch.cat([a for a, _ in pairs])
    outputs = torch.cat([b for _, b in pairs])
    rows = []
    for start in range(0, len(inputs), columns):
        rows += [("inputs", inputs[start:start + columns]), ("reconstructions", outputs[start:start + columns])]
    return image_grid_png(rows, run.info, path, columns)


def sample_images(run: Run, count: int, out_dir: str | Path, seed: int = 0) -> Path:
    """Draw ``count`` images from a variational decoder's prior into ``out_dir/samples.png``."""
    from edh.train.reconstruction import image_grid_png

    decoder = run.model.decoder
    if run.model.heads or decoder is None or not hasattr(decoder, "sample"):
        raise ValueError("--sample needs a run whose model has no heads and a variational decoder "
                         "(decoder: {name: conv_transpose, latent_dim: N, variational: true, image_size: S})")
    if count < 1:
        raise ValueError(f"--sample takes a positive count, got {count}")
    images = decoder.eval().sample(count, torch.Generator().manual_seed(seed))
    return image_grid_png([("samples from the prior", images)], run.info, Path(out_dir) / "samples.png")
