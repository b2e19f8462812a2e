"""Sliding-window inference: a model run on overlapping tiles of a large image, its outputs stitched.

`tiled_forward` cuts ``(B, C, H, W)`` images into windows of ``tile`` pixels that overlap by a
fraction ``overlap`` (the last window of each row and column flush with the border), runs the
model on a few tiles at a time and stitches each head's raw output the way the head declares
(``Head.tiling``). ``"blend"`` outputs (per-pixel maps at the input's resolution, e.g.
segmentation logits) are accumulated into one output buffer per head, each tile weighted by
`blend_window`, and divided by the summed weights at the end. The buffers ``(B, K, H, W)`` and the
summed weights ``(H, W)`` are the only full-size tensors: memory beyond them is that of
``tiles_per_batch`` tiles, whatever the image's size. An image no larger than a tile runs whole,
as it is, and gives exactly the untiled result.

Example:
    >>> outputs = tiled_forward(model, images, model.tasks(), tile=256, overlap=0.25)
    >>> outputs["mask"].shape  # (B, K, H, W), as model(images)["mask"]
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

TILINGS = ("blend",)


def window_starts(length: int, tile: int, overlap: float = 0.25) -> list[int]:
    """Start offsets of windows of ``tile`` pixels covering ``length`` pixels.

    Windows step by ``floor(tile * (1 - overlap))`` (at least 1); the last one ends at ``length``
    exactly (it may overlap its neighbour by more than ``overlap``). One window at 0 when
    ``length <= tile``.
    """
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    return [*range(0, length - tile, step), length - tile]


def ramp(length: int, margin: int) -> torch.Tensor:
    """``(length,)`` weights: 1 in the middle, falling linearly to ``0.5 / margin`` over the
    ``margin`` pixels at each end (all ones when ``margin`` is 0). Never 0, so a pixel that only
    one tile covers (the image border) keeps its value after normalisation."""
    if margin <= 0:
        return torch.ones(length)
    position = torch.arange(length, dtype=torch.float32) + 0.5
    return (torch.minimum(position, length - position) / margin).clamp(max=1.0)


def blend_window(height: int, width: int, margin: tuple[int, int]) -> torch.Tensor:
    """The weight of each pixel of a ``height x width`` tile: the outer product of two `ramp`s,
    ``margin = (rows, columns)`` wide (the tiles' nominal overlap). Shape ``(height, width)``.

    A linear ramp rather than a Gaussian (nnU-Net's): where two neighbouring tiles overlap by the
    nominal margin their ramps sum to a constant, so the stitched map cross-fades linearly from
    one tile to the next, and each tile's centre, the pixels that saw the most context, is used
    as it is instead of being blended everywhere; nor does it need a floor against dividing by
    nearly zero at the image border, since its smallest weight is ``0.5 / margin``.
    """
    return ramp(height, margin[0])[:, None] * ramp(width, margin[1])[None, :]


def is_dense(head: Any) -> bool:
    """Whether ``head``'s raw output is a per-pixel map at the input's resolution (``tiling`` ``"blend"``):
    tiles of it are blended, and a map of a resized image can be up-sampled back to the image's size."""
    return getattr(head, "tiling", None) == "blend"


def untileable(tasks: dict[str, Any]) -> list[str]:
    """The names of the heads in ``tasks`` that cannot run on tiles (no known ``tiling``)."""
    return [name for name, head in tasks.items() if getattr(head, "tiling", None) not in TILINGS]


def check_tileable(tasks: dict[str, Any], option: str = "--tile") -> None:
    """Raise ``ValueError`` naming every head of ``tasks`` that cannot run on tiles, and what to do."""
    bad = untileable(tasks)
    if not bad:
        return
    tileable = [name for name in tasks if name not in bad]
    described = ", ".join(f"{name!r} ({type(tasks[name]).__name__}, tiling "
                          f"{getattr(tasks[name], 'tiling', None)!r})" for name in bad)
    keep = f", or keep only the heads that tile with --heads {' '.join(tileable)}" if tileable else ""
    raise ValueError(
        f"{option} runs the model on overlapping tiles and stitches each head's outputs as its Head.tiling says, "
        f"but head(s) {described} cannot be stitched (tilings edh knows: {', '.join(TILINGS)}). Drop {option} to "
        f"run whole images{keep}"
    )


def _tile_size(tile: int | tuple[int, int]) -> tuple[int, int]:
    size = (tile, tile) if isinstance(tile, int) else tuple(int(v) for v in tile)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"the tile size must be one or two positive whole numbers of pixels, got {tile!r}")
    return size


def tiled_forward(model: Callable[..., dict[str, Any]], images: torch.Tensor, tasks: dict[str, Any],
                  tile: int | tuple[int, int] = 512, overlap: float = 0.25, tiles_per_batch: int = 4,
                  progress: Callable[[Iterable, int], Iterable] | None = None) -> dict[str, torch.Tensor]:
    """``model(images)`` computed tile by tile: the same output dict, stitched.

    Args:
        model: called with a batch of tiles ``(n * B, C, tile_h, tile_w)``; returns ``{head: output}``.
        images: ``(B, C, H, W)``.
        tasks: ``{head name: head}`` (``Model.tasks()``); each head's ``tiling`` says how its output
            is stitched. Any head without one is a ``ValueError`` before the model runs.
        tile: the window's side in pixels, or ``(height, width)``; a side longer than the image is
            cut to the image's.
        overlap: the fraction of a window shared with its neighbour, in ``[0, 1)``.
        tiles_per_batch: windows run in one forward (each holds ``B`` tiles): the memory bound.
        progress: wraps the iterable of tile batches (with their count), e.g. a progress bar.

    Returns:
        ``{head: (B, K, H, W)}`` float32 maps; an image no larger than one tile gives ``model(images)``.
    """
    check_tileable(tasks)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"the tile overlap is a fraction of the tile in [0, 1), got {overlap}")
    if tiles_per_batch < 1:
        raise ValueError(f"tiles_per_batch must be at least 1, got {tiles_per_batch}")
    batch, _, height, width = images.shape  # (B, C, H, W)
    tile_h, tile_w = _tile_size(tile)
    tile_h, tile_w = min(tile_h, height), min(tile_w, width)
    if (tile_h, tile_w) == (height, width):
        return model(images)
    rows, columns = window_starts(height, tile_h, overlap), window_starts(width, tile_w, overlap)
    margin = tuple(size - (starts[1] - starts[0]) if len(starts) > 1 else 0
                   for size, starts in ((tile_h, rows), (tile_w, columns)))
    weight = blend_window(tile_h, tile_w, margin).to(images.device)  # (tile_h, tile_w)
    windows = [(top, left) for top in rows for left in columns]
    coverage = torch.zeros(height, width, device=images.device)  # (H, W): summed weights
    for top, left in windows:
        coverage[top:top + tile_h, left:left + tile_w] += weight
    sums: dict[str, torch.Tensor] = {}  # head -> (B, K, H, W) weighted sum of its tiles' outputs
    chunks = [windows[i:i + tiles_per_batch] for i in range(0, len(windows), tiles_per_batch)]
    for chunk in (progress(chunks, len(chunks)) if progress is not None else chunks):
        tiles = torch.cat([images[:, :, top:top + tile_h, left:left + tile_w] for top, left in chunk])  # (n*B, C, th, tw)
        outputs = model(tiles)
        for name in tasks:
            value = outputs[name]
            expected = (len(chunk) * batch, tile_h, tile_w)
            if not isinstance(value, torch.Tensor) or value.ndim != 4 or \
                    (value.shape[0], *value.shape[-2:]) != expected:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"head {name!r} declares tiling 'blend' but gave {shape} for {expected[0]} tiles of "
                    f"{tile_h}x{tile_w}: a blended output is a per-pixel map (B, K, H, W) at the input's resolution"
                )
            value = value.float().unflatten(0, (len(chunk), batch))  # (n, B, K, th, tw)
            if name not in sums:
                sums[name] = torch.zeros(batch, value.shape[2], height, width, device=images.device)
            for index, (top, left) in enumerate(chunk):
                sums[name][:, :, top:top + tile_h, left:left + tile_w].addcmul_(value[index], weight)
    for total in sums.values():
        total.div_(coverage)  # in place: no second full-size tensor
    return sums
