"""`predict_inputs`: a run's predictions for the user's inputs (image files, sentences), printed and drawn.

Every task of the model (`Model.tasks`) predicts through the Head contract: ``predict``, then
``format_prediction`` for the printed line, ``write_predictions`` for pictures and
``prediction_records`` for JSON files. Inputs are read by the reader of the run's input kind
(`edh.workflows.inputs`). Large images run on overlapping tiles (``tile``; `edh.ops.tiling`, as
each head's ``tiling`` says), and no image is resized without saying so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edh.workflows.inputs import reader_for
from edh.workflows.run import Run

log = logging.getLogger("edh")


@dataclass
class Prediction:
    """What each task predicted for one input (``source``: its path, or the sentence)."""

    source: Any
    lines: dict[str, str]


def predict_inputs(run: Run, items: list[Any], out_dir: str | Path | None = None, top_k: int | None = None,
                   batch_size: int = 16, allow_changed_data: bool = False, tile: int | None = None,
                   overlap: float | None = None, progress: bool = False) -> tuple[list[Prediction], list[Path]]:
    """Predict every task for each item; tasks that draw write into ``out_dir``, and tasks that give
    records (detection: COCO results) get them gathered into ``out_dir/<task>.json``.

    A run whose images keep their own sizes (no ``image_size``) predicts one at a time, each at its
    size. A run trained at a fixed ``image_size`` resizes other images to it (saying once which, from
    what to what); the maps of dense heads (``Head.tiling`` ``"blend"``: segmentation logits) are
    up-sampled back to each image's own size before ``predict``, so masks and overlays have the
    image's resolution. ``tile``: each image is read at its own size and run on overlapping
    ``tile x tile`` windows (`edh.ops.tiling`, ``overlap`` a fraction, default 0.25); every head must
    declare a tiling, checked before any image is read. ``progress``: a bar over each image's tiles.

    Inputs are preprocessed as in training, from the run's ``data.json`` checked against its
    fingerprint: an edited ``data.json`` is a `DataError`; with ``allow_changed_data`` a warning, and
    the training values are used (as ``edh eval`` does).
    """
    from edh.workflows.data_check import check_run_info

    check_run_info(run, allow_changed_data)
    reader = reader_for(run)
    model = run.model.eval()
    tasks = model.tasks()
    forward = tiled_call(run, model, tasks, tile, overlap)
    read = reader.read_native if tile is not None else reader.read
    results: list[Prediction] = []
    written: list[Path] = []
    records: dict[str, list[dict[str, Any]]] = {}
    if reader.one_at_a_time(run) or tile is not None:
        batch_size = 1
    paths = [Path(p) if reader.pictures else p for p in items]
    originals = reader.sizes(paths) if reader.sizes is not None and tile is None else [None] * len(paths)
    if run.info.image_size and tile is None:
        note_resized(paths, originals, tuple(run.info.image_size), tasks)
    options: dict[str, Any] = {"top_k": top_k} if top_k else {}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        inputs = read(run, chunk)
        size = tuple(inputs.shape[-2:]) if inputs.ndim == 4 else None
        bar = tile_progress(f"{Path(str(chunk[0])).name}: tiles", progress) if tile is not None else None
        with torch.inference_mode():
            outputs = forward(inputs, bar) if tile is not None else model(inputs)
        lines: list[dict[str, str]] = [{} for _ in chunk]
        for name, head in tasks.items():
            for indices, raw, at in at_own_size(head, outputs[name], size, originals[start:start + batch_size]):
                shown = inputs if len(indices) == len(chunk) else inputs[indices]
                prediction = head.predict(raw, input_size=at, inputs=shown, **options)
                for position, index in enumerate(indices):
                    lines[index][name] = head.format_prediction(prediction, position)
                if out_dir is not None and reader.pictures:
                    files = [chunk[i] for i in indices]
                    written += head.write_predictions(prediction, shown, files, Path(out_dir))
                    records.setdefault(name, []).extend(head.prediction_records(prediction, files, at, run.info))
        results += [Prediction(p, l) for p, l in zip(chunk, lines)]
    for name, rows in records.items():
        if rows:
            from edh.utils.io import atomic_write_text

            written.append(atomic_write_text(Path(out_dir) / f"{name}.json", json.dumps(rows)))
    return results, written


def tiled_call(run: Run, model: Any, tasks: dict[str, Any], tile: int | None, overlap: float | None):
    """``(images, progress) -> outputs`` through `edh.ops.tiling.tiled_forward`, or None without ``tile``.
    Everything that would make tiling fail (a head without a tiling, an input kind without a size of
    its own, an overlap outside [0, 1)) is an error here, before any input is read."""
    if tile is None:
        if overlap is not None:
            raise ValueError("--overlap is the overlap of the tiles of --tile; give --tile N as well")
        return None
    from edh.ops.tiling import check_tileable, tiled_forward

    reader = reader_for(run)
    if reader.read_native is None:
        raise ValueError(f"--tile cuts images into tiles, but {run.path} takes {run.info.input_kind} inputs")
    overlap = 0.25 if overlap is None else overlap
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"--overlap is a fraction of the tile in [0, 1), got {overlap}")
    if tile < 1:
        raise ValueError(f"--tile is the tile's side in pixels (at least 1), got {tile}")
    check_tileable(tasks)
    return lambda images, bar=None: tiled_forward(model, images, tasks, tile, overlap, progress=bar)


def tile_progress(description: str, enabled: bool):
    """A progress bar for `tiled_forward` (``(iterable, total) -> iterable``), shown only for an image
    of more than one batch of tiles; None when not ``enabled``."""
    if not enabled:
        return None

    def bar(chunks, total: int):
        if total <= 1:
            return chunks
        from rich.progress import track

        return track(chunks, total=total, description=description, transient=True)

    return bar


def note_resized(paths: list[Any], originals: list[tuple[int, int] | None], size: tuple[int, int],
                 tasks: dict[str, Any]) -> None:
    """Say once which images are resized to the run's ``size`` (``H x W``), from what, and what else to do:
    a warning when a head's per-pixel maps are involved (``tiling`` ``"blend"``), a note otherwise."""
    from edh.ops.tiling import is_dense, untileable

    changed = [(p, s) for p, s in zip(paths, originals) if s is not None and tuple(s) != size]
    if not changed:
        return
    shown = ", ".join(f"{Path(str(p)).name} {s[0]}x{s[1]}" for p, s in changed[:5])
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    dense = [name for name, head in tasks.items() if is_dense(head)]
    text = (f"{len(changed)} image(s) resized to the run's image_size {size[0]}x{size[1]} (height x width) to "
            f"predict, as in training: {shown}{more} -> {size[0]}x{size[1]}.")
    if dense:
        text += (f" The maps of {', '.join(dense)} are up-sampled back to each image's own size (masks and "
                 "overlays at full size).")
    if not untileable(tasks):
        text += f" To predict at full resolution instead, run on overlapping tiles: --tile {max(size)}"
    log.log(logging.WARNING if dense else logging.INFO, "%s", text)


def at_own_size(head: Any, raw: Any, size: tuple[int, int] | None,
                originals: list[tuple[int, int] | None]) -> list[tuple[list[int], Any, tuple[int, int] | None]]:
    """``[(indices, raw outputs, input_size)]`` to predict from: the batch as it is, or, for a head whose
    outputs are per-pixel maps (``tiling`` ``"blend"``) of images that were resized, each image's map
    ``(1, K, h, w)`` up-sampled (bilinear) back to its own size ``(h, w)`` before ``predict``."""
    from edh.ops.tiling import is_dense

    resized = [i for i, s in enumerate(originals) if s is not None and size is not None and tuple(s) != size]
    if not is_dense(head) or not resized or not isinstance(raw, torch.Tensor):
        return [(list(range(len(originals))), raw, size)]
    import torch.nn.functional as F

    groups = []
    for index, own in enumerate(originals):
        one = raw[index:index + 1]  # (1, K, H, W) at the run's size
        if index in resized:
            one = F.interpolate(one.float(), size=tuple(own), mode="bilinear", align_corners=False)  # (1, K, h, w)
        groups.append(([index], one, tuple(own) if index in resized else size))
    return groups


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
