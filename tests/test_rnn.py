"""The recurrent family: ``lstm`` / ``gru`` encoders (packed and traceable paths) and decoders (Luong
attention, cached step), generation over them (greedy, beam search), a run trained for two steps,
translated, exported to ONNX and run with onnxruntime. Tiny models, fixed seeds."""

from __future__ import annotations

import itertools

import pytest
import torch

import edh
from edh.core.errors import SpecError
from edh.core.features import FeatureSpec, Sequence
from edh.layers.rnn import RecurrentStack, reverse_within_length
from edh.ops.generation import beam_search, generate, generation_head, greedy_search, greedy_uncached

V = 40
CELLS = ["lstm", "gru"]


def rnn_translator(cell: str = "lstm", vocab: int = V, encoder: str | None = None, **decoder) -> edh.Model:
    encoder = encoder or cell
    encoder_options = ({"preset": "tiny"} if encoder == "transformer" else
                       {"embedding_dim": 16, "hidden_size": 12, "num_layers": 2, "bidirectional": True})
    torch.manual_seed(0)
    return edh.build(encoder={"name": encoder, "vocab_size": vocab, **encoder_options},
                     decoder={"name": cell, "vocab_size": vocab, "hidden_size": 24, "num_layers": 2, **decoder},
                     heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": vocab}}).eval()


def sources(rows: int = 5, length: int = 9, vocab: int = V) -> torch.Tensor:
    """Random source ids with some rows right-padded (pad id 0)."""
    ids = torch.randint(4, vocab, (rows, length), generator=torch.Generator().manual_seed(3))
    ids[1, 5:] = 0
    ids[3, 2:] = 0
    return ids


# ---- the encoder: padding never reaches a real position --------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_packed_and_unpacked_paths_agree_with_each_row_alone(cell):
    torch.manual_seed(0)
    packed = RecurrentStack(cell, 6, 5, num_layers=2, bidirectional=True, pack=True).eval()
    unpacked = RecurrentStack(cell, 6, 5, num_layers=2, bidirectional=True, pack=False).eval()
    unpacked.load_state_dict(packed.state_dict())
    lengths = torch.tensor([7, 3, 5, 1, 0])  # a row of padding only too
    padding = torch.arange(7)[None, :] >= lengths[:, None]
    x = torch.randn(5, 7, 6)
    with torch.no_grad():
        a, b = packed(x, padding), unpacked(x, padding)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        assert (a[padding] == 0).all() and (b[padding] == 0).all()
        for row, n in enumerate(lengths.tolist()):
            if n:  # each row alone, without padding: the real positions are the same
                alone = packed(x[row:row + 1, :n])
                torch.testing.assert_close(a[row:row + 1, :n], alone, atol=1e-6, rtol=1e-5)


def test_reverse_within_length_leaves_padding_and_undoes_itself():
    x = torch.arange(10.0).view(2, 5, 1)
    out = reverse_within_length(x, torch.tensor([5, 3]))
    assert out[:, :, 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    assert torch.equal(reverse_within_length(out, torch.tensor([5, 3])), x)


@pytest.mark.parametrize("cell", CELLS)
def test_encoder_padding_does_not_change_the_real_positions(cell):
    model = rnn_translator(cell)
    src = torch.randint(4, V, (1, 6))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    target = torch.randint(3, V, (1, 4))
    with torch.no_grad():
        memory = model.encoder(padded)
        assert memory.features.shape == (1, 9, 24) and memory.padding_mask[0].tolist() == [False] * 6 + [True] * 3
        torch.testing.assert_close(memory.features[:, :6], model.encoder(src).features, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model(padded, decoder_input=target)["tokens"],
                                   model(src, decoder_input=target)["tokens"], atol=1e-5, rtol=1e-5)


def test_rnn_encoder_fits_where_the_transformer_encoder_does():
    """A classification head on the sequence, a transformer decoder on it; an lstm decoder on a transformer."""
    classifier = edh.build(encoder={"name": "gru", "vocab_size": V, "hidden_size": 8},
                           heads={"label": {"type": "classification", "num_classes": 3}})
    assert classifier(sources())["label"].shape == (5, 3)
    mixed = edh.build(encoder={"name": "lstm", "vocab_size": V, "embedding_dim": 32, "hidden_size": 16},
                      decoder={"name": "transformer", "vocab_size": V, "preset": "tiny"},
                      heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V}})
    assert mixed.decoder.token_embedding is mixed.encoder.token_embedding  # shared: (V, 32) on both sides
    assert generate(mixed.eval(), sources(), max_new_tokens=5).tokens.shape[0] == 5
    other = rnn_translator("lstm", encoder="transformer")
    assert generate(other, sources(), beam_size=2, max_new_tokens=5).tokens.shape[0] == 5


# ---- the decoder: embeddings, errors --------------------------------------------------------------------
def test_tied_and_shared_embeddings_are_owned_once():
    model = edh.build(encoder={"name": "lstm", "vocab_size": V, "embedding_dim": 24, "hidden_size": 8},
                      decoder={"name": "lstm", "vocab_size": V, "hidden_size": 24, "share_embeddings": True},
                      heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V}})
    embedding = model.encoder.token_embedding.weight
    assert model.decoder.token_embedding.weight is embedding and model.heads["tokens"].weight is embedding
    assert [k for k in model.state_dict() if "embedding.weight" in k] == ["encoder.token_embedding.weight"]


def test_embedding_mismatches_are_clear_errors():
    with pytest.raises(SpecError, match="embedding_dim.*tie_embeddings: false"):
        edh.build(encoder={"name": "lstm", "vocab_size": V},
                  decoder={"name": "lstm", "vocab_size": V, "embedding_dim": 16, "hidden_size": 24},
                  heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V}})
    untied = edh.build(encoder={"name": "lstm", "vocab_size": V},
                       decoder={"name": "lstm", "vocab_size": V, "embedding_dim": 16, "hidden_size": 24},
                       heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V, "tie_embeddings": False}})
    assert untied(sources(), decoder_input=torch.ones(5, 3, dtype=torch.long))["tokens"].shape == (5, 3, V)
    with pytest.raises(SpecError, match="share_embeddings.*set decoder.share_embeddings: false"):
        edh.build(encoder={"name": "lstm", "vocab_size": V, "embedding_dim": 8},
                  decoder={"name": "lstm", "vocab_size": V, "hidden_size": 24, "share_embeddings": True},
                  heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V}})
    assert rnn_translator(attention="dot").decoder.attention.proj is None  # memory 24 wide, hidden 24: fits
    with pytest.raises(ValueError, match="dot attention.*attention: general"):
        edh.build(encoder={"name": "lstm", "vocab_size": V, "hidden_size": 8},
                  decoder={"name": "lstm", "vocab_size": V, "hidden_size": 24, "attention": "dot"},
                  heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V}})
    with pytest.raises(ValueError, match="unknown attention score 'bahdanau'; pick general or dot"):
        rnn_translator(attention="bahdanau")
    with pytest.raises(SpecError, match="decoder.num_layers: 0 is out of range"):
        rnn_translator(num_layers=0)
    with pytest.raises(ValueError, match="unknown recurrent cell 'rnn'; pick one of lstm, gru"):
        RecurrentStack("rnn", 4, 4)
    with pytest.raises(ValueError, match="decoder_input"):
        rnn_translator()(sources())
    with pytest.raises(ValueError, match="max_len"):
        generate(rnn_translator(max_len=8), sources(), max_new_tokens=20)


def test_decoder_attends_over_an_image_pyramid():
    decoder = edh.build(encoder={"name": "conv", "channels": [4, 8]},
                        decoder={"name": "gru", "vocab_size": V, "hidden_size": 16},
                        heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V}}).eval()
    out = decoder(torch.randn(2, 1, 8, 8), decoder_input=torch.ones(2, 3, dtype=torch.long))
    assert out["tokens"].shape == (2, 3, V)
    assert generate(decoder, torch.randn(2, 1, 8, 8), beam_size=2, max_new_tokens=4).tokens.shape[0] == 2


# ---- generation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_step_features_match_the_teacher_forced_forward(cell):
    model = rnn_translator(cell)
    prefix = torch.randint(3, V, (5, 8))
    with torch.inference_mode():
        memory = model.encoder(sources())
        full = model.decoder(memory, decoder_input=prefix).features
        cache = model.decoder.init_cache(memory, 8)
        steps = torch.stack([model.decoder.step(prefix[:, t], cache) for t in range(8)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell, encoder", [("lstm", None), ("gru", None), ("lstm", "transformer")])
def test_cached_and_uncached_greedy_give_identical_tokens(cell, encoder):
    model = rnn_translator(cell, encoder=encoder)
    _, head = generation_head(model)
    with torch.inference_mode():
        memory = model.encoder(sources())
        reference = greedy_uncached(model.decoder, head.logits, memory, 12)
        model.decoder.eos_id = int(reference.tokens[0, 2])  # rows stop at different steps
        reference = greedy_uncached(model.decoder, head.logits, memory, 12)
        cached = greedy_search(model.decoder, head.logits, memory, 12)
    assert (reference.lengths < 12).any(), "no row stopped at eos; the test would not cover stopping"
    assert torch.equal(cached.tokens, reference.tokens) and torch.equal(cached.lengths, reference.lengths)


def sequence_score(model, memory: Sequence, tokens: list[int], penalty: float) -> float:
    """``log p(tokens) / len ** penalty`` by one teacher-forced forward (no cache)."""
    decoder, head = model.decoder, model.heads["tokens"]
    prefix = torch.tensor([[decoder.bos_id] + tokens[:-1]])
    logp = torch.log_softmax(head.logits(decoder(memory, decoder_input=prefix).features[0]), -1)
    return float(logp[torch.arange(len(tokens)), torch.tensor(tokens)].sum()) / len(tokens) ** penalty


@pytest.mark.parametrize("cell, penalty", [("lstm", 1.0), ("gru", 0.0)])
def test_beam_search_finds_the_best_sequence_of_a_brute_force_search(cell, penalty):
    """Vocabulary 4 (pad, bos, eos, one word), 2 new tokens: a beam of 4 holds every hypothesis of the
    first step, so it must find the best of all 13 outputs (eos at step 1 or 2, or none), as scored
    one by one without the cache."""
    vocab, steps = 4, 2
    model = rnn_translator(cell, vocab=vocab)
    torch.manual_seed(1)
    with torch.no_grad():  # large random weights: peaked distributions, a different best output per source
        for parameter in model.parameters():
            parameter.normal_(0.0, 1.0)
    src = torch.tensor([[3, 3, 3], [3, 0, 0], [3, 3, 0]])
    eos = model.decoder.eos_id
    outputs = [[eos]] + [[a, b] for a, b in itertools.product(range(vocab), repeat=2) if a != eos]
    with torch.inference_mode():
        result = beam_search(model.decoder, model.heads["tokens"].logits, model.encoder(src), 4, steps, penalty)
        for row in range(3):
            memory = model.encoder(src[row:row + 1, :int((src[row] != 0).sum())])
            scores = {tuple(out): sequence_score(model, memory, out, penalty) for out in outputs}
            best = max(scores, key=scores.get)
            assert result.tokens[row, :int(result.lengths[row])].tolist() == list(best)
            assert abs(float(result.scores[row]) - scores[best]) < 1e-4
    assert len({tuple(row) for row in result.tokens.tolist()}) > 1, "every source has the same best output"


def plain_beam(model, src: torch.Tensor, beam: int, max_new: int, penalty: float) -> tuple[list[int], float]:
    """One source, no cache: the rules of `beam_search`, written plainly (as tests/test_translation.py)."""
    decoder, head = model.decoder, model.heads["tokens"]
    memory = model.encoder(src[None])
    beams = [([], 0.0, False)]  # tokens, summed log-prob, finished
    for position in range(max_new):
        candidates = []
        for tokens, score, done in beams:
            if done:
                candidates.append((tokens + [decoder.pad_id], score, True, len(tokens)))
                continue
            prefix = torch.tensor([[decoder.bos_id] + tokens])
            logp = torch.log_softmax(head.logits(decoder(memory, decoder_input=prefix).features[0, -1]), -1)
            for token, value in enumerate(logp.tolist()):
                candidates.append((tokens + [token], score + value, token == decoder.eos_id, position + 1))
        candidates.sort(key=lambda c: -(c[1] / c[3] ** penalty))
        beams = [(tokens, score, done) for tokens, score, done, _ in candidates[:beam]]
        if all(done for _, _, done in beams):
            break
    length = lambda tokens: (tokens.index(decoder.eos_id) + 1) if decoder.eos_id in tokens else len(tokens)  # noqa
    best = max(beams, key=lambda b: b[1] / length(b[0]) ** penalty)
    return best[0][:length(best[0])], best[1] / length(best[0]) ** penalty


def test_beam_search_over_longer_outputs_matches_a_plain_reference():
    """Beam 4 over 6 steps: the reordered (h, c) states give the log-probs of an uncached search."""
    model = rnn_translator("lstm", vocab=12)
    src = torch.randint(4, 12, (3, 6), generator=torch.Generator().manual_seed(5))
    src[1, 4:] = 0
    _, head = generation_head(model)
    with torch.inference_mode():
        model.decoder.eos_id = int(greedy_uncached(model.decoder, head.logits, model.encoder(src), 6).tokens[0, 1])
        result = beam_search(model.decoder, head.logits, model.encoder(src), 4, 6, length_penalty=1.0)
        for row in range(3):
            expected, score = plain_beam(model, src[row][src[row] != 0], 4, 6, 1.0)
            assert result.tokens[row, :int(result.lengths[row])].tolist() == expected
            assert abs(float(result.scores[row]) - score) < 1e-4
    assert (result.lengths < 6).any(), "no beam ended in eos; the test would not cover finished beams"


# ---- a run: train, translate, export, onnxruntime ---------------------------------------------------------
SPEC = {
    "model": {"encoder": {"name": "lstm", "embedding_dim": 16, "hidden_size": 12, "num_layers": 2},
              "decoder": {"name": "lstm", "embedding_dim": 16, "hidden_size": 16, "share_embeddings": True},
              "heads": {"tokens": {"type": "lm", "source": "decoder"}}},
    "data": {"name": "numbers", "max_number": 200, "vocab_size": 100, "batch_size": 16},
    "train": {"epochs": 1, "lr": 0.01, "seed": 0},
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    out = tmp_path_factory.mktemp("rnn") / "run"
    return train_run(parse_run_spec(SPEC), out, max_steps=2, limit_val_batches=1, limit_train_batches=2)


def test_a_run_trains_two_steps_then_translates(trained_run):
    from edh.workflows.translate import Translator

    assert trained_run.spec.model.decoder.options()["eos_id"] == 2  # filled from the data's tokenizer
    texts = ["one hundred and two", "seven"]
    translator = Translator(trained_run)
    for beam in (1, 3):
        out = translator.translate(texts, beam_size=beam, max_new_tokens=6)
        assert len(out) == 2 and all(isinstance(line, str) for line in out)


def test_lstm_translator_exports_and_onnxruntime_generates_the_same(trained_run):
    pytest.importorskip("onnxruntime")
    from edh.export.onnx import read_metadata
    from edh.export.runs import export_run, onnx_run
    from edh.workflows.translate import Translator

    report = export_run(trained_run)
    assert [p.name for p in report.files] == ["model.onnx", "model.decoder_step.onnx"]
    assert report.max_abs_diff < 1e-4
    metadata = read_metadata(report.files[0])
    assert (metadata["memory"], metadata["state"]) == (["memory", "memory_keys", "memory_mask"], ["hidden", "cell"])
    assert any(n.startswith("beam search (beam 3)") and "tokens equal" in n for n in report.notes)
    texts = ["one hundred and twelve", "seven", "two hundred and one"]
    eager, exported = Translator(trained_run), Translator(onnx_run(trained_run))
    for beam in (1, 3):
        assert exported.translate(texts, beam_size=beam) == eager.translate(texts, beam_size=beam)
    src = sources(vocab=100)
    model = trained_run.model.eval()
    assert torch.equal(generate(exported.model, src, max_new_tokens=10).tokens,
                       generate(model, src, max_new_tokens=10).tokens)


def test_gru_translator_exports_its_state_without_a_cell(tmp_path):
    pytest.importorskip("onnxruntime")
    from types import SimpleNamespace

    from edh.export.generation import OnnxSeq2Seq, export_seq2seq

    model = rnn_translator("gru", encoder="transformer")
    report = export_seq2seq(SimpleNamespace(model=model, info=SimpleNamespace(image_size=None)),
                            tmp_path / "model.onnx", None, 17, 1e-4)
    names = [c.name for c in report.checks["model.decoder_step.onnx"]]
    assert names[:2] == ["logits (past 0)", "next.hidden (past 0)"] and not any("cell" in n for n in names)
    runtime = OnnxSeq2Seq.load(tmp_path / "model.onnx", model)
    for beam in (1, 3):
        assert torch.equal(generate(runtime, sources(), beam_size=beam, max_new_tokens=10).tokens,
                           generate(model, sources(), beam_size=beam, max_new_tokens=10).tokens)


def test_in_spec_other_than_sequence_or_pyramid_is_refused():
    from edh.decoders.rnn import LSTMDecoder

    with pytest.raises(SpecError, match="sequence or an image pyramid"):
        LSTMDecoder(FeatureSpec("vector", (8,)), vocab_size=V)


def test_the_step_follows_weight_changes():
    """`rnn_step` keeps fused weights between calls: an optimizer step or a load must be seen."""
    model = rnn_translator("gru").train()
    prefix = torch.randint(3, V, (5, 4))

    def step_matches_forward() -> None:
        model.eval()
        with torch.inference_mode():
            memory = model.encoder(sources())
            full = model.decoder(memory, decoder_input=prefix).features
            cache = model.decoder.init_cache(memory, 4)
            steps = torch.stack([model.decoder.step(prefix[:, t], cache) for t in range(4)], dim=1)
        torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)

    step_matches_forward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(sources(), decoder_input=prefix)["tokens"].square().mean().backward()
    optimizer.step()
    step_matches_forward()
    model.load_state_dict(rnn_translator("gru").state_dict())
    step_matches_forward()


def test_describe_counts_the_lstm_matmuls():
    model = edh.build(encoder={"name": "lstm", "vocab_size": 50, "hidden_size": 16, "embedding_dim": 8,
                               "bidirectional": True}, heads={"label": {"type": "classification", "num_classes": 3}})
    rows = {row.role: row.macs for row in model.describe((5,)).rows}
    assert rows["Encoder"] == 2 * 5 * 4 * 16 * (8 + 16)  # two directions, five positions, four gates
