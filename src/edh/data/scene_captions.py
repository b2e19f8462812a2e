"""``scene-captions``: lines of real sprites and the text they read, for image-to-text (captioning, OCR).

Each image is a strip of 1-6 sprites (scikit-learn's handwritten digits, Fashion-MNIST clothes, or
both: the same real sprites as ``scenes``) on a noisy canvas, placed left to right on one or more
lines with random sizes, gaps, vertical jitter and colours. Its caption is what the sprites are, in
reading order (top line first, left to right): ``"7 3 sneaker 1"``. Digits read as ``0``..``9``,
clothes as one word each (`CAPTION_WORDS`).

An item is ``(image (C, H, W) float normalised, caption token ids (T,))``, ``<bos> ... <eos>``;
`collate_captions` pads a batch into ``(images (B, C, H, W), {"tokens": next tokens (B, T)},
{"decoder_input": prefix (B, T)})``, as the translation datasets do, so every sequence decoder
(``transformer``, ``lstm``) with an ``lm`` head trains on it unchanged. The tokenizer is trained on
the training captions and kept in the run folder (``tokenizer.json``); the test split's sprites are
never seen in training (digits: a held-out share of the sprites; Fashion-MNIST: its official test images).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edh.core.registry import register_dataset
from edh.data.base import DataBundle, DataInfo
from edh.data.scenes import MEAN, STD, _load_sprites, _pair, _resized
from edh.data.text import TOKENIZER_FILE, pad_batch
from edh.data.tokenizer import TextTokenizer

TARGET = "tokens"
SPRITES = ("digits", "fashion-mnist", "both")
# Fashion-MNIST's classes as one word each, in its label order (the names of `FASHION_CLASSES`)
CAPTION_WORDS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


class CaptionedImages(Dataset):
    """Images (uint8, in memory) with their captions, tokenised once.

    Attributes:
        captions: the reference text of each image (for BLEU, CER and exact match).
        source_texts: how examples name each image in reports (``"test image 3"``).
    """

    def __init__(self, images: torch.Tensor, captions: list[str], tokenizer: TextTokenizer, mean: tuple[float, ...],
                 std: tuple[float, ...], split: str = "") -> None:
        self.images, self.captions = images, list(captions)
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
        ids = tokenizer.encode_batch(self.captions) if self.captions else []
        self.targets = [torch.tensor([bos, *row, eos]) for row in ids]
        self.source_texts = [f"{split} image {index}".strip() for index in range(len(self.captions))]

    @property
    def references(self) -> list[str]:
        return self.captions

    def __len__(self) -> int:
        return len(self.images)

    def content_digest(self) -> str:
        digest = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        digest.update("\n".join(self.captions).encode())
        return digest.hexdigest()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.images[index].float() / 255.0 - self.mean) / self.std, self.targets[index]


def collate_captions(items: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int = 0):
    """``[(image, caption ids)]`` -> ``(images, {"tokens": (B, T)}, {"decoder_input": (B, T)})``."""
    images = torch.stack([image for image, _ in items])
    targets = pad_batch([t for _, t in items], pad_id)
    return images, {TARGET: targets[:, 1:]}, {"decoder_input": targets[:, :-1]}


def _sprite_pool(sprites: str, fashion_root: str | None, seed: int) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per split: alpha maps ``(N, h, w)`` at a common 28 x 28 and the word each sprite reads as."""
    if sprites not in SPRITES:
        raise ValueError(f"data.sprites must be one of {', '.join(SPRITES)}, got {sprites!r}")
    kinds = ["digits", "fashion-mnist"] if sprites == "both" else [sprites]
    pools: dict[str, tuple[list[np.ndarray], list[str]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for kind in kinds:
        per_split, _ = _load_sprites(kind, fashion_root, seed)
        words = [str(i) for i in range(10)] if kind == "digits" else CAPTION_WORDS
        for split, (alpha, classes) in per_split.items():
            if kind == "digits" and sprites == "both":  # 8 x 8 digits to the clothes' 28 x 28
                alpha = np.stack([_resized(a, 28) for a in alpha]) if len(alpha) else alpha
            pools[split][0].append(alpha)
            pools[split][1].extend(words[int(c)] for c in classes)
    return {split: (np.concatenate(alphas), words) for split, (alphas, words) in pools.items()}


def render_line_images(count: int, alpha: np.ndarray, words: list[str], rng: np.random.Generator,
                       size: tuple[int, int], lines: int, objects: tuple[int, int], sprite_size: tuple[int, int],
                       noise: float, in_channels: int) -> tuple[torch.Tensor, list[str]]:
    """``count`` images ``(count, C, H, W)`` uint8 and their captions (see the module docstring).

    The image is cut into ``lines`` bands; the sprites of a band sit left to right with random gaps
    and a vertical jitter that keeps them inside their band, so the reading order is unambiguous.
    """
    H, W = size
    band = H // lines
    images = np.empty((count, in_channels, H, W), dtype=np.uint8)
    captions = []
    for index in range(count):
        canvas = np.full((in_channels, H, W), rng.uniform(0.0, 0.3), dtype=np.float32)
        if noise > 0:
            canvas += rng.normal(0.0, noise, size=canvas.shape).astype(np.float32)
        total = int(rng.integers(objects[0], objects[1] + 1))
        per_line = np.bincount(rng.integers(0, lines, total), minlength=lines) if lines > 1 else np.array([total])
        read: list[str] = []
        for line, n in enumerate(per_line):
            sizes = [int(rng.integers(sprite_size[0], min(sprite_size[1], band) + 1)) for _ in range(n)]
            while sum(sizes) > W and sizes:  # too wide for the line: shrink the largest sprite
                sizes[int(np.argmax(sizes))] -= 1
            spare = W - sum(sizes)
            gaps = rng.multinomial(spare, np.ones(n + 1) / (n + 1)) if n else []
            x = int(gaps[0]) if n else 0
            for k, s in enumerate(sizes):
                y = line * band + int(rng.integers(0, band - s + 1))
                pick = int(rng.integers(len(alpha)))
                sprite = _resized(alpha[pick], s)
                colour = rng.uniform(0.6, 1.0, size=(in_channels, 1, 1)).astype(np.float32)
                if in_channels == 3:
                    colour[int(rng.integers(3))] *= rng.uniform(0.0, 0.5)
                region = canvas[:, y:y + s, x:x + s]
                canvas[:, y:y + s, x:x + s] = sprite * colour + (1 - sprite) * region
                read.append(words[pick])
                x += s + int(gaps[k + 1])
        images[index] = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
        captions.append(" ".join(read))
    return torch.from_numpy(images), captions


@register_dataset("scene-captions")
def scene_captions(image_size: list[int] = (32, 128), lines: int = 1, objects: int | list[int] = (1, 6),
                   sprite_size: int | list[int] = (14, 20), sprites: str = "digits", noise: float = 0.05,
                   in_channels: int = 3, num_train: int = 6000, num_val: int = 300, num_test: int = 500,
                   tokenizer: str = "bpe", vocab_size: int = 64, tokenizer_file: str | None = None,
                   fashion_root: str | None = None, seed: int = 0) -> DataBundle:
    """Strips of real sprites captioned with what they read (module docstring).

    Args:
        image_size: ``[height, width]`` of every image (or one side for a square).
        lines: text lines per image (each ``height / lines`` pixels high).
        objects: sprites per image, a count or ``[min, max]``.
        sprite_size: sprite side in pixels, a size or ``[min, max]`` (at most a line's height).
        sprites: ``digits``, ``fashion-mnist`` (Debian's ``dataset-fashion-mnist`` or ``fashion_root``) or ``both``.
        noise: standard deviation of the background noise (pixels in [0, 1]).
        in_channels: 3 (coloured sprites) or 1 (grey).
        num_train, num_val, num_test: images per split; each split draws from its own sprites.
        tokenizer, vocab_size: the caption tokenizer (``bpe`` or ``char``), trained on the training captions.
        tokenizer_file: a saved tokenizer to use instead (``edh eval`` passes the run's).
        fashion_root: a folder with the Fashion-MNIST IDX files.
        seed: fixes the sprite split and every image.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    sizes, counts = _pair(sprite_size, "sprite_size"), _pair(objects, "objects")
    if not 1 <= lines <= height // sizes[0]:
        raise ValueError(f"data.lines is {lines}: lines of at least {sizes[0]} pixels (the smallest sprite_size) "
                         f"must fit the image height {height}")
    if counts[1] * sizes[0] > width * lines:
        raise ValueError(f"data.objects up to {counts[1]} sprites of at least {sizes[0]} pixels do not fit "
                         f"{lines} line(s) of {width} pixels; widen the image or lower objects")
    if in_channels not in (1, 3):
        raise ValueError(f"data.in_channels must be 1 or 3, got {in_channels}")
    pools = _sprite_pool(sprites, fashion_root, seed)
    rendered = {}
    for offset, (split, count) in enumerate((("train", num_train), ("val", num_val), ("test", num_test))):
        alpha, words = pools[split]
        rendered[split] = render_line_images(count, alpha, words, np.random.default_rng([seed, 100 + offset]),
                                             (height, width), lines, counts, sizes, noise, in_channels)
    text_tokenizer = (TextTokenizer.from_file(tokenizer_file) if tokenizer_file
                      else TextTokenizer.train(rendered["train"][1], tokenizer, vocab_size))
    mean, std = (MEAN,) * in_channels, (STD,) * in_channels
    parts = {split: CaptionedImages(images, captions, text_tokenizer, mean, std, split)
             for split, (images, captions) in rendered.items()}
    V, pad = text_tokenizer.vocab_size, text_tokenizer.pad_id
    specials = text_tokenizer.special_tokens()
    longest = max(len(t) for part in parts.values() for t in part.targets) if num_train else 2
    info = DataInfo(
        "image", in_channels, (height, width), mean, std, [], {TARGET: "generation"},
        {"dataset": "scene-captions", "sprites": sprites, "tokenizer": tokenizer, "tokenizer_file": TOKENIZER_FILE,
         "vocab_size": V, "special_tokens": specials, "max_tokens": longest,
         "decoder_defaults": {"vocab_size": V, "pad_id": pad, "bos_id": specials["bos_id"],
                              "eos_id": specials["eos_id"]},
         "head_defaults": {TARGET: {"vocab_size": V, "pad_id": pad, "max_new_tokens": longest + 2}}},
    )
    return DataBundle(parts["train"], parts["val"], parts["test"], info, _collate(pad),
                      {TOKENIZER_FILE: text_tokenizer.to_str()})


def _collate(pad_id: int) -> Any:
    from functools import partial

    return partial(collate_captions, pad_id=pad_id)
