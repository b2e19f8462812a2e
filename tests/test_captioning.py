"""Image to text: the pyramid-to-memory adapter of step decoders, the scene-captions data, generation
(cached = uncached, ONNX = eager) and a tiny captioner through the CLI (train, eval, predict, describe)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import edh
from conftest import edh_in_process
from edh.core.errors import SpecError
from edh.core.features import FeatureSpec, Sequence
from edh.data.base import DataInfo, build_data
from edh.data.scene_captions import render_line_images
from edh.decoders.base import PyramidMemory
from edh.layers.positional import sinusoidal_2d
from edh.ops.generation import generate, greedy_search, greedy_uncached

VOCAB = 20


def captioner(encoder: dict | None = None, decoder: str = "transformer", **options) -> edh.Model:
    torch.manual_seed(0)
    spec = {"name": decoder, "vocab_size": VOCAB, "share_embeddings": False, **options}
    if decoder == "transformer":
        spec.setdefault("preset", "tiny")
    return edh.build(encoder=encoder or {"name": "conv", "in_channels": 3, "channels": [8, 16, 32]},
                     decoder=spec, heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": VOCAB,
                                                     "tie_embeddings": False}}, pretrained=False).eval()


# ---- the adapter ------------------------------------------------------------------------------------------
def test_pyramid_memory_is_the_chosen_level_row_major_with_2d_positions():
    fmap = torch.randn(2, 8, 3, 5)
    memory = PyramidMemory(1, 8)([torch.randn(2, 4, 6, 10), fmap])
    assert isinstance(memory, Sequence) and memory.padding_mask is None and memory.features.shape == (2, 15, 8)
    positions = sinusoidal_2d(3, 5, 8)
    assert torch.allclose(memory.features[:, 7], fmap[:, :, 1, 2] + positions[7])  # cell (row 1, col 2)
    assert len({tuple(row.tolist()) for row in positions}) == 15  # every cell has its own code


def test_an_image_encoder_feeds_a_sequence_decoder_through_a_level_that_exists():
    model = captioner(memory_level=1)
    assert model.decoder.memory_adapter.level == 1
    out = model(torch.rand(2, 3, 16, 32), decoder_input=torch.ones(2, 4, dtype=torch.long))
    assert out["tokens"].shape == (2, 4, VOCAB)
    with pytest.raises(SpecError, match=r"memory_level is 5, but the encoder's pyramid has levels 0..2"):
        captioner(memory_level=5)
    with pytest.raises(SpecError, match="multiple of 4"):
        captioner({"name": "conv", "in_channels": 3, "channels": [6, 10]})


def test_a_timm_vit_feeds_a_transformer_decoder():
    model = captioner({"name": "timm:test_vit"})
    assert model.encoder.out_spec.kind == "pyramid"  # the ViT's tokens as a stride-16 map
    tokens = generate(model, torch.rand(2, 3, 64, 64), max_new_tokens=4).tokens
    assert tokens.shape[0] == 2


def test_cached_generation_over_image_cells_matches_re_decoding_the_prefix():
    model = captioner()
    images = torch.rand(3, 3, 16, 32)
    with torch.inference_mode():
        memory = model.decoder.memory(model.encoder(images))
        cached = greedy_search(model.decoder, model.heads["tokens"].logits, memory, 8)
        uncached = greedy_uncached(model.decoder, model.heads["tokens"].logits, memory, 8)
    assert torch.equal(cached.tokens[:, :uncached.tokens.shape[1]], uncached.tokens)
    assert generate(model, images, beam_size=3, max_new_tokens=6).tokens.shape[0] == 3


def test_an_exported_captioner_generates_the_same_tokens(tmp_path):
    pytest.importorskip("onnxruntime")
    from edh.export.generation import OnnxSeq2Seq, export_seq2seq

    model = captioner()
    run = SimpleNamespace(model=model, info=DataInfo(input_kind="image", image_size=(16, 32)))
    report = export_seq2seq(run, tmp_path / "model.onnx", None, 17, 1e-4)
    assert any("tokens equal" in note for note in report.notes)
    images = torch.rand(2, 3, 16, 32)
    runtime = OnnxSeq2Seq.load(tmp_path / "model.onnx", model)
    assert torch.equal(generate(runtime, images, max_new_tokens=8).tokens, generate(model, images, max_new_tokens=8).tokens)


# ---- the data --------------------------------------------------------------------------------------------
def test_captions_read_the_sprites_top_line_first_left_to_right():
    alpha = np.zeros((3, 8, 8), np.float32)
    alpha[:, 2:6, 2:6] = 1.0  # three opaque squares that read "a", "b", "c"
    rng = np.random.default_rng(0)
    images, captions = render_line_images(20, alpha, ["a", "b", "c"], rng, (32, 96), 2, (2, 4), (10, 14), 0.0, 1)
    assert images.shape == (20, 1, 32, 96) and images.dtype == torch.uint8
    assert all(2 <= len(c.split()) <= 4 and set(c.split()) <= {"a", "b", "c"} for c in captions)
    assert len(set(captions)) > 5


def test_scene_captions_bundle_fills_the_decoder_and_head_from_its_tokenizer():
    bundle = build_data("scene-captions", {"num_train": 40, "num_val": 4, "num_test": 6}, 0)
    assert bundle.info.input_kind == "image" and bundle.info.image_size == (32, 128)
    assert bundle.info.targets == {"tokens": "generation"} and "tokenizer.json" in bundle.files
    image, target = bundle.train[0]
    assert image.shape == (3, 32, 128) and target[0] == 1 and target[-1] == 2
    tokenizer = edh.data.tokenizer.TextTokenizer.from_str(bundle.files["tokenizer.json"])
    assert tokenizer.decode(target[1:].tolist()) == bundle.train.references[0]
    images, targets, context = bundle.collate_fn([bundle.train[i] for i in range(3)])
    assert images.shape == (3, 3, 32, 128) and torch.equal(targets["tokens"][:, :-1], context["decoder_input"][:, 1:])
    assert bundle.test.source_texts[2] == "test image 2" and len(bundle.test.references) == 6
    with pytest.raises(ValueError, match="do not fit"):
        build_data("scene-captions", {"objects": [1, 12], "num_train": 4}, 0)


# ---- end to end --------------------------------------------------------------------------------------------
SPEC = {
    "model": {"encoder": {"name": "conv", "channels": [8, 16, 32]},
              "decoder": {"name": "transformer", "preset": "tiny", "share_embeddings": False},
              "heads": {"tokens": {"type": "lm", "source": "decoder"}}},
    "data": {"name": "scene-captions", "objects": [1, 3], "num_train": 64, "num_val": 8, "num_test": 8,
             "batch_size": 16},
    "train": {"epochs": 1, "seed": 0},
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
}


def run_edh(*args):
    """``edh ARGS``' stdout, the command run in this process (``edh.cli.main``; no fresh interpreter)."""
    return edh_in_process(*args).stdout


@pytest.mark.slow
def test_a_captioner_trains_evaluates_and_captions_image_files(tmp_path):
    from PIL import Image

    spec = tmp_path / "captioner.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    run_edh("train", spec, "--out", tmp_path / "run")
    metrics = json.loads(run_edh("eval", tmp_path / "run", "--json"))["metrics"]["tokens"]
    assert set(metrics) == {"bleu", "chrf", "cer", "exact_match"} and 0 <= metrics["exact_match"] <= 1
    bundle = build_data("scene-captions", {"num_train": 1, "num_val": 0, "num_test": 0}, 0)
    Image.fromarray(bundle.train.images[0].permute(1, 2, 0).numpy()).save(tmp_path / "strip.png")
    out = run_edh("predict", tmp_path / "run", tmp_path / "strip.png", "--out", tmp_path / "pictures")
    assert out.startswith(f"{tmp_path / 'strip.png'}\ttokens: ") and (tmp_path / "pictures" / "captions.png").is_file()
    table = run_edh("describe", tmp_path / "run")
    assert "conv" in table and "transformer" in table and "lm" in table
