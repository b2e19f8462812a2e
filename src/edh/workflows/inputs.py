"""Reading a user's inputs for a trained run, per input kind: image files, or lines of text.

`INPUT_READERS` maps an encoder's ``input_kind`` to its reader; a new input kind (audio...) is one
more entry here, never a branch in predict or embed. Each reader turns the user's items (file paths
or sentences) into the batch the run's model takes, preprocessed exactly as the run's data was.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class InputReader:
    """How ``edh predict`` / ``edh embed`` read one input kind.

    Attributes:
        read: ``(run, items) -> batch``: the model input for ``items``.
        pictures: predictions can be drawn over the inputs (heads' ``write_predictions``).
        one_at_a_time: ``(run) -> bool``: items cannot share a batch (images of their own sizes).
        speed_options: ``--fast`` / ``--bf16`` / ``--compile`` (`edh.utils.perf.InferenceModel`:
            channels_last, folded BatchNorm) apply to models of this input.
        exportable: ``edh export`` writes models of this input as one ONNX graph (``images -> outputs``;
            generating models export as encoder + decoder-step graphs whatever their input).
        texts: the items are sentences (``edh predict --text``), not file paths.
        read_native: ``(run, items) -> batch`` read at the items' own size (no resize), for tiled
            inference (``--tile``); None where the input kind has no size of its own.
        sizes: ``(items) -> [(H, W) or None]``: each item's own size, read cheaply (an image's header),
            so predict can say which inputs it resizes and restore dense outputs to their size.
        join: ``(run, batches) -> batch``: batches ``read`` one item at a time joined into one (``edh
            serve`` reads each request alone, then batches requests): images of one size concatenate,
            sentences and clips of different lengths are right-padded as ``read`` pads them.
    """

    read: Callable[[Any, list[Any]], torch.Tensor]
    pictures: bool
    one_at_a_time: Callable[[Any], bool]
    speed_options: bool = False
    exportable: bool = False
    texts: bool = False
    read_native: Callable[[Any, list[Any]], torch.Tensor] | None = None
    sizes: Callable[[list[Any]], list[tuple[int, int] | None]] | None = None
    join: Callable[[Any, list[torch.Tensor]], torch.Tensor] = lambda run, batches: torch.cat(batches)


def read_images(run: Any, paths: list[str | Path], resize: bool = True) -> torch.Tensor:
    """Read, resize and normalise image files as the run's data was: ``(N, C, H, W)``.

    The preprocessing is the run's ``data.json``, which the workflows check once against its
    fingerprint before reading (`edh.workflows.data_check.check_run_info`). Images are read upright
    (EXIF orientation applied) by the same `read_image` as training. ``resize=False`` keeps each
    image's own size (normalised as in training), for tiled inference.
    """
    from edh.data.files import read_image
    from edh.data.transforms import eval_transform

    info = run.info
    transform = eval_transform(info.image_size if resize else None, info.mean, info.std)
    images = [transform(read_image(p, info.in_channels)) for p in paths]
    sizes = {tuple(i.shape[-2:]) for i in images}
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes {sorted(sizes)} and the run has no fixed image_size; "
                         "predict them one at a time")
    return torch.stack(images)


def read_native_images(run: Any, paths: list[str | Path]) -> torch.Tensor:
    """`read_images` at the images' own size (all of ``paths`` must share it)."""
    return read_images(run, paths, resize=False)


def image_sizes(paths: list[str | Path]) -> list[tuple[int, int] | None]:
    """``(H, W)`` of each image file as it is read (EXIF orientation applied), from its header; None for
    a file that cannot be opened (reading it then raises its own error)."""
    from edh.utils.images import upright_size

    sizes: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            sizes.append(tuple(upright_size(path)))
        except Exception:  # noqa: BLE001 - read_image names the file and the problem
            sizes.append(None)
    return sizes


@functools.lru_cache(maxsize=8)
def _tokenizer_at(path: str, modified_ns: int):
    from edh.data.tokenizer import TextTokenizer

    return TextTokenizer.from_file(path)


def run_tokenizer(run: Any):
    """The tokenizer a text run was trained with (``tokenizer.json`` in its folder), read once per
    process (again when the file changes)."""
    from edh.data.tokenizer import TextTokenizer

    name = run.info.extra.get("tokenizer_file")
    if not name:
        raise ValueError(f"{run.path}/data.json names no tokenizer_file; this run was not trained on text data")
    path = Path(run.path) / name
    try:
        return _tokenizer_at(str(path), path.stat().st_mtime_ns)
    except OSError:
        return TextTokenizer.from_file(path)  # its own error names the missing or unreadable file


def encode_texts(run: Any, tokenizer: Any, texts: list[str]) -> list[torch.Tensor]:
    """Source token ids as the training data had them: truncated to the run's ``max_tokens``, ``<eos>`` last."""
    keep = int(run.info.extra.get("max_tokens", 256)) - 2
    return [torch.tensor(ids[:keep] + [tokenizer.eos_id]) for ids in tokenizer.encode_batch(list(texts))]


def read_texts(run: Any, texts: list[str]) -> torch.Tensor:
    """Sentences -> right-padded token ids ``(N, S)`` (`encode_texts`)."""
    from edh.data.text import pad_batch

    tokenizer = run_tokenizer(run)
    return pad_batch(encode_texts(run, tokenizer, texts), tokenizer.pad_id)


def join_texts(run: Any, batches: list[torch.Tensor]) -> torch.Tensor:
    """`read_texts` batches ``(1, S_i)`` -> one ``(N, max S_i)``, right-padded with the tokenizer's pad id."""
    from edh.data.text import pad_batch

    return pad_batch([row for batch in batches for row in batch], run_tokenizer(run).pad_id)


def join_audio(run: Any, batches: list[torch.Tensor]) -> torch.Tensor:
    """`read_audio` batches ``(1, T_i)`` -> one ``(N, max T_i)``, right-padded with zeros."""
    from edh.data.wav import pad_waves

    return pad_waves([row for batch in batches for row in batch])


def read_audio(run: Any, paths: list[str | Path]) -> torch.Tensor:
    """WAV files -> ``(N, samples)`` mono waveforms at the run's sample rate, right-padded with zeros
    (`edh.data.wav.read_wav`: the reading, mixing down and resampling of training)."""
    from edh.data.wav import SAMPLE_RATE, pad_waves, read_wav

    rate = int(run.info.extra.get("sample_rate", SAMPLE_RATE))
    return pad_waves([torch.from_numpy(read_wav(p, rate)) for p in paths])


INPUT_READERS: dict[str, InputReader] = {
    "image": InputReader(read_images, pictures=True, one_at_a_time=lambda run: run.info.image_size is None,
                         speed_options=True, exportable=True, read_native=read_native_images, sizes=image_sizes),
    "tokens": InputReader(read_texts, pictures=False, one_at_a_time=lambda run: False, texts=True, join=join_texts),
    "audio": InputReader(read_audio, pictures=False, one_at_a_time=lambda run: False, join=join_audio),
}


def reader_for(run: Any) -> InputReader:
    """The reader of ``run``'s input kind; an error naming the kinds there are when none fits."""
    kind = run.info.input_kind
    if kind not in INPUT_READERS:
        raise ValueError(f"{run.path}: no reader for {kind!r} inputs; edh reads {', '.join(INPUT_READERS)}")
    return INPUT_READERS[kind]
