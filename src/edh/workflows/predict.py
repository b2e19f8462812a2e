"""`predict_inputs`: a run's predictions for the user's inputs (image files, sentences), printed and drawn.

Every task of the model (`Model.tasks`) predicts through the Head contract: ``predict``, then
``format_prediction`` for the printed line, ``write_predictions`` for pictures and
``prediction_records`` for JSON files, ``prediction_settings`` (thresholds, caps) said once and
``prediction_notes`` (e.g. a cap reached) said per image. Inputs are read by the reader of the run's
input kind (`edh.workflows.inputs`). Large images run on overlapping tiles (``tile``; `edh.ops.tiling`,
as each head's ``tiling`` says: maps blended, boxes merged), and no image is resized without saying so.
Records name each image by an id (`image_ids_for`): never a made-up number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edh.ops.tiling import merges_boxes, predictions_of
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
                   overlap: float | None = None, progress: bool = False, merge: str | None = None,
                   tiles_per_batch: int = 4, image_ids: str | Path | None = None,
                   settings: dict[str, Any] | None = None) -> tuple[list[Prediction], list[Path]]:
    """Predict every task for each item; tasks that draw write into ``out_dir``, and tasks that give
    records (detection: COCO results) get them gathered into ``out_dir/<task>.json``.

    A run whose images keep their own sizes (no ``image_size``) predicts one at a time, each at its
    size. A run trained at a fixed ``image_size`` resizes other images to it (saying once which, from
    what to what); the maps of dense heads (``Head.tiling`` ``"blend"``: segmentation logits) are
    up-sampled back to each image's own size before ``predict``, so masks and overlays have the
    image's resolution. ``tile``: each image is read at its own size and run on overlapping
    ``tile x tile`` windows (`edh.ops.tiling`, ``overlap`` a fraction, default 0.25); every head must
    declare a tiling, checked before any image is read; ``"boxes"`` heads (detection) merge their
    tiles' detections with ``merge`` (``"nms"``, the default, or ``"wbf"``), and their caps then hold
    for the whole image. ``tiles_per_batch``: tiles per forward. ``progress``: a bar over each image's tiles.

    ``settings``: prediction settings to change for this call (``{"max_detections": 500}``), given to
    every head that has them (`apply_prediction_settings`); each head's settings are logged once and
    each head's ``prediction_notes`` (an image at its ``max_detections``...) as warnings.
    ``image_ids``: a JSON file ``{file name: id}`` or COCO annotations, for the records' ids (`image_ids_for`).

    Inputs are preprocessed as in training, from the run's ``data.json`` checked against its
    fingerprint: an edited ``data.json`` is a `DataError`; with ``allow_changed_data`` a warning, and
    the training values are used (as ``edh eval`` does).
    """
    from edh.workflows.data_check import check_run_info

    check_run_info(run, allow_changed_data)
    from edh.ops.generation import generates

    if generates(run.model):
        raise ValueError(f"{run.path} generates text step by step (a translator, captioner or speech model with a "
                         "sequence decoder): predict with edh.workflows.translate.Translator(run).translate(sentences) "
                         "or .describe_files(image or audio files), as `edh predict` does")
    reader = reader_for(run)
    model = run.model.eval()
    tasks = model.tasks()
    forward = tiled_call(run, model, tasks, tile, overlap, merge, tiles_per_batch)
    if image_ids is not None and out_dir is None:
        raise ValueError("--image-ids gives the image_id of each image in the results files that --out writes; "
                         "give --out DIR as well")
    apply_prediction_settings(tasks, settings or {})
    say_prediction_settings(tasks, tiled=tile is not None)
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
    info, unmatched = run.info, []
    if out_dir is not None and reader.pictures:
        ids, unmatched = image_ids_for(paths, run.info, image_ids)
        info = dataclasses.replace(run.info, extra={**run.info.extra, "image_ids": ids})
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        inputs = read(run, chunk)
        size = tuple(inputs.shape[-2:]) if inputs.ndim == 4 else None
        bar = tile_progress(f"{Path(str(chunk[0])).name}: tiles", progress) if tile is not None else None
        with torch.inference_mode():
            outputs = forward(inputs, bar, options) if tile is not None else model(inputs)
        lines: list[dict[str, str]] = [{} for _ in chunk]
        for name, head in tasks.items():
            for indices, raw, at in at_own_size(head, outputs[name], size, originals[start:start + batch_size]):
                shown = inputs if len(indices) == len(chunk) else inputs[indices]
                prediction = predictions_of(head, raw, input_size=at, inputs=shown, **options)
                files = [chunk[i] for i in indices]
                for note in head.prediction_notes(prediction, files, name):
                    log.warning("%s", note)
                for position, index in enumerate(indices):
                    lines[index][name] = head.format_prediction(prediction, position)
                if out_dir is not None and reader.pictures:
                    written += head.write_predictions(prediction, shown, files, Path(out_dir))
                    records.setdefault(name, []).extend(head.prediction_records(prediction, files, at, info))
        results += [Prediction(p, l) for p, l in zip(chunk, lines)]
    for name, rows in records.items():
        if rows:
            from edh.utils.io import atomic_write_text

            written.append(atomic_write_text(Path(out_dir) / f"{name}.json", json.dumps(rows)))
    if unmatched and any(records.values()):
        shown_names = ", ".join(unmatched[:10]) + (f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else "")
        log.warning("%d image(s) have no image id (not in the run's COCO files%s, no numeric file name): their "
                    "records carry the file name as image_id: %s. Give --image-ids FILE (JSON {file name: id}, or "
                    "COCO annotations) to use your dataset's ids", len(unmatched),
                    ", not in --image-ids" if image_ids is not None else "", shown_names)
    return results, written


def apply_prediction_settings(tasks: dict[str, Any], settings: dict[str, Any]) -> None:
    """Give each setting (``{"max_detections": 500}``) to every head whose ``prediction_settings`` has it
    (`Head.set_prediction_settings`); a setting that no head has is a ``ValueError`` naming the heads."""
    for key, value in settings.items():
        takers = [name for name, head in tasks.items() if key in head.prediction_settings()]
        if not takers:
            option = "--" + key.replace("_", "-")
            raise ValueError(f"{option} sets {key}, but no head of this run has it (heads: "
                             f"{', '.join(f'{n} ({type(h).__name__})' for n, h in tasks.items())})")
        for name in takers:
            tasks[name].set_prediction_settings(**{key: value})


def say_prediction_settings(tasks: dict[str, Any], tiled: bool = False) -> None:
    """Log, once, each head's prediction settings (its thresholds and caps); on tiles, say that the caps of
    ``"boxes"`` heads hold per tile and again for the whole image."""
    for name, head in tasks.items():
        values = head.prediction_settings()
        if not values:
            continue
        text = ", ".join(f"{key} {value}" for key, value in values.items())
        if tiled and merges_boxes(head):
            text += " (on tiles: per tile, then for the whole image after merging)"
        log.info("head %r predicts with %s", name, text)


def image_ids_for(paths: list[Path], info: Any, image_ids: str | Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """Each image's id for results files, by file name: from the run's COCO annotation files
    (``info.extra["coco_annotations"]``), then ``image_ids`` (`read_image_ids`), then a numeric stem
    (``000000139.jpg`` -> 139), else the file name itself (a string). Returns the ids and the file
    names that got none but their name."""
    run_ids: dict[str, int] = {}
    for file in (getattr(info, "extra", None) or {}).get("coco_annotations", []):
        try:
            run_ids.update(read_image_ids(file, "the run's COCO file"))
        except ValueError as error:
            log.warning("%s; its images get ids from --image-ids or their file names", error)
    given = read_image_ids(image_ids) if image_ids is not None else {}
    ids: dict[str, Any] = {}
    unmatched: list[str] = []
    for path in paths:
        name, stem = Path(str(path)).name, Path(str(path)).stem
        if name in run_ids or name in given:
            ids[name] = run_ids.get(name, given.get(name))
        elif stem.isdigit():
            ids[name] = int(stem)
        else:
            ids[name] = name
            unmatched.append(name)
    return ids, unmatched


def read_image_ids(path: str | Path, what: str = "--image-ids") -> dict[str, int]:
    """File name -> image id from a JSON file: an object ``{file name: id}``, or COCO annotations (the
    ``file_name`` and ``id`` of its ``images``). Names count by their last part (``a/b.png``: ``b.png``).
    An unreadable file or an id that is not a whole number is a ``ValueError`` saying which."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be read: {error.strerror or error}") from None
    except ValueError as error:
        raise ValueError(f"{what} {path} is not JSON ({error}); give a JSON object {{file name: image id}} or a "
                         "COCO annotations file") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list):  # COCO annotations
        pairs = [(str(image.get("file_name", "")), image.get("id")) for image in data["images"]
                 if isinstance(image, dict)]
    elif isinstance(data, dict):
        pairs = list(data.items())
    else:
        raise ValueError(f"{what} {path} holds a JSON {type(data).__name__}; give a JSON object {{file name: image "
                         "id}} or a COCO annotations file")
    ids: dict[str, int] = {}
    for name, value in pairs:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what} {path}: {name!r} has image id {value!r}; COCO image ids are whole numbers")
        ids[Path(name).name] = value
    return ids


def tiled_call(run: Run, model: Any, tasks: dict[str, Any], tile: int | None, overlap: float | None,
               merge: str | None = None, tiles_per_batch: int = 4):
    """``(images, progress, predict options) -> outputs`` through `edh.ops.tiling.tiled_forward`, or None
    without ``tile``. Everything that would make tiling fail (a head without a tiling, an input kind
    without a size of its own, an overlap outside [0, 1), a ``merge`` without box heads) is an error
    here, before any input is read."""
    if tile is None:
        for option, value in (("--overlap", overlap), ("--merge", merge)):
            if value is not None:
                raise ValueError(f"{option} is about the tiles of --tile; give --tile N as well")
        return None
    from edh.ops.tiling import MERGES, check_tileable, tiled_forward

    reader = reader_for(run)
    if reader.read_native is None:
        raise ValueError(f"--tile cuts images into tiles, but {run.path} takes {run.info.input_kind} inputs")
    overlap = 0.25 if overlap is None else overlap
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"--overlap is a fraction of the tile in [0, 1), got {overlap}")
    if tile < 1:
        raise ValueError(f"--tile is the tile's side in pixels (at least 1), got {tile}")
    check_tileable(tasks)
    if merge is not None:
        if merge not in MERGES:
            raise ValueError(f"--merge is one of {', '.join(MERGES)}, got {merge!r}")
        if not any(merges_boxes(head) for head in tasks.values()):
            raise ValueError(f"--merge merges detections across tiles, but no head of {run.path} gives boxes "
                             "(tiling 'boxes'): drop --merge")
    if tiles_per_batch < 1:
        raise ValueError(f"--tiles-per-batch is a number of tiles per forward (at least 1), got {tiles_per_batch}")

    def forward(images, bar=None, options=None):
        return tiled_forward(model, images, tasks, tile, overlap, tiles_per_batch, progress=bar,
                             merge=merge or "nms", predict_options=options)

    return forward


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
