"""The translation family: transformer encoder / decoder, lm head, KV-cached generation (greedy and
beam search), tokenizer and parallel-text data. Tiny models, fixed seeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import edh
from edh.data.base import DataFilesMissingError, DataInfo, build_data
from edh.data.text import collate_translation, read_ding_pairs, read_tsv
from edh.data.tokenizer import TextTokenizer
from edh.ops.generation import beam_search, generate, generates, generation_head, greedy_search, greedy_uncached
from edh.core.features import FeatureSpec, Sequence
from edh.core.spec import RunSpec
from edh.core.errors import SpecError
from edh.decoders.base import StepCache, StepDecoder

V = 40


def tiny_translator(vocab: int = V, **options) -> edh.Model:
    size = {"vocab_size": vocab, "preset": "tiny", **options}
    return edh.build(encoder={"name": "transformer", **size}, decoder={"name": "transformer", **size},
                     heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": vocab}})


def sources(rows: int = 5, length: int = 9) -> torch.Tensor:
    """Random source ids with some rows right-padded (pad id 0)."""
    ids = torch.randint(4, V, (rows, length), generator=torch.Generator().manual_seed(3))
    ids[1, 5:] = 0
    ids[3, 2:] = 0
    return ids


# ---- roles ------------------------------------------------------------------------------------------
def test_forward_shapes_backward_and_padding_mask():
    model = tiny_translator()
    src = sources()
    target = torch.randint(3, V, (5, 7))
    outputs = model(src, decoder_input=target)
    assert outputs["tokens"].shape == (5, 7, V)
    memory = model.encoder(src)
    assert memory.features.shape == (5, 9, 32) and torch.equal(memory.padding_mask, src == 0)
    loss = model.heads["tokens"].loss(outputs["tokens"], target)["ce"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_padding_does_not_change_the_real_positions():
    model = tiny_translator().eval()
    src = torch.randint(4, V, (1, 6))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    target = torch.randint(3, V, (1, 4))
    with torch.no_grad():
        plain = model(src, decoder_input=target)["tokens"]
        more = model(padded, decoder_input=target)["tokens"]
    torch.testing.assert_close(plain, more, atol=1e-5, rtol=1e-5)


def test_tied_embeddings_are_owned_once():
    model = tiny_translator()
    embedding = model.encoder.token_embedding.weight
    assert model.decoder.token_embedding.weight is embedding
    assert model.heads["tokens"].weight is embedding
    keys = list(model.state_dict())
    assert [k for k in keys if "embedding.weight" in k] == ["encoder.token_embedding.weight"]
    assert sum(p.numel() for p in model.heads["tokens"].parameters()) == 0
    groups = model.param_groups(1e-3)
    ids = [id(p) for group in groups for p in group["params"]]
    assert len(ids) == len(set(ids))  # each parameter in exactly one optimizer group
    torch.optim.AdamW(groups)


def test_untied_model_owns_separate_weights():
    model = edh.build(encoder={"name": "transformer", "vocab_size": V, "preset": "tiny"},
                      decoder={"name": "transformer", "vocab_size": 30, "preset": "tiny", "share_embeddings": False},
                      heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": 30, "tie_embeddings": False}})
    assert model.decoder.token_embedding.weight.shape == (30, 32)
    assert model.heads["tokens"].weight.shape == (30, 32)
    assert model(sources(), decoder_input=torch.ones(5, 3, dtype=torch.long))["tokens"].shape == (5, 3, 30)


def test_shared_embedding_mismatch_is_a_clear_error():
    with pytest.raises(SpecError, match="share_embeddings.*set decoder.share_embeddings: false"):
        edh.build(encoder={"name": "transformer", "vocab_size": V, "preset": "tiny"},
                  decoder={"name": "transformer", "vocab_size": 30, "preset": "tiny"},
                  heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": 30}})


def test_tied_head_on_a_non_embedding_source_is_a_clear_error():
    with pytest.raises(SpecError, match="tie_embeddings: false"):
        edh.build(encoder={"name": "transformer", "vocab_size": V, "preset": "tiny"},
                  decoder={"name": "transformer", "vocab_size": V, "preset": "tiny"},
                  heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V + 1}})


def test_decoder_without_target_prefix_says_how_to_pass_it():
    model = tiny_translator()
    with pytest.raises(ValueError, match="decoder_input"):
        model(sources())


def test_presets_and_overrides():
    model = edh.build(encoder={"name": "transformer", "vocab_size": V, "preset": "small", "num_layers": 1},
                      decoder={"name": "transformer", "vocab_size": V, "preset": "small", "num_layers": 1},
                      heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V}})
    assert model.encoder.d_model == 256 and len(model.encoder.layers) == 1
    with pytest.raises(ValueError, match="unknown transformer preset 'huge'"):
        tiny_translator(preset="huge")
    with pytest.raises(ValueError, match="not divisible"):
        tiny_translator(d_model=30, num_heads=4)


def test_transformer_base_parameter_count():
    """The base preset at a 37,000-token shared vocabulary (the paper reports 65M)."""
    with torch.device("meta"):
        model = tiny_translator(vocab=37000, preset="base")
    assert sum(p.numel() for p in model.parameters()) == 63_084_544
    layer = model.encoder.layers[0]
    assert (layer.self_attn.qkv.out_features, layer.mlp.fc1.out_features, layer.self_attn.num_heads) == (1536, 2048, 8)
    assert len(model.encoder.layers) == len(model.decoder.layers) == 6


def test_label_smoothed_loss_ignores_padding():
    head = tiny_translator().heads["tokens"]
    logits = torch.randn(2, 4, V)
    targets = torch.tensor([[5, 6, 0, 0], [7, 8, 9, 0]])
    changed = logits.clone()
    changed[targets == 0] = 100.0  # anything at padded positions
    assert torch.allclose(head.loss(logits, targets)["ce"], head.loss(changed, targets)["ce"])


def test_describe_table_for_a_translator():
    description = tiny_translator().describe()
    roles = [row.role for row in description.rows]
    assert roles == ["Encoder", "Decoder", "Head:tokens"] and description.rows[2].params == 0


# ---- generation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"norm_first": False}, {"positions": "learned"}])
def test_cached_and_uncached_greedy_give_identical_tokens(options):
    model = tiny_translator(**options).eval()
    src = sources()
    _, head = generation_head(model)
    with torch.inference_mode():
        memory = model.encoder(src)
        reference = greedy_uncached(model.decoder, head.logits, memory, 12)
        # make rows stop at different steps: call a token the model produces early "eos"
        model.decoder.eos_id = int(reference.tokens[0, 2])
        reference = greedy_uncached(model.decoder, head.logits, memory, 12)
        cached = greedy_search(model.decoder, head.logits, memory, 12)
    assert (reference.lengths < 12).any(), "no row stopped at eos; the test would not cover stopping"
    assert torch.equal(cached.tokens, reference.tokens)
    assert torch.equal(cached.lengths, reference.lengths)


def test_step_features_match_full_forward():
    model = tiny_translator(norm_first=False).eval()
    src = sources()
    prefix = torch.randint(3, V, (5, 8))
    with torch.inference_mode():
        memory = model.encoder(src)
        full = model.decoder(memory, decoder_input=prefix).features
        cache = model.decoder.init_cache(memory, 8)
        steps = torch.stack([model.decoder.step(prefix[:, t], cache) for t in range(8)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)


def reference_beam(model, src: torch.Tensor, beam: int, max_new: int, penalty: float) -> tuple[list[int], float]:
    """One source, no cache: the same beam rules as `beam_search`, written plainly."""
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


def test_batched_beam_search_matches_a_plain_reference():
    model = tiny_translator(vocab=12).eval()
    src = torch.randint(4, 12, (3, 6), generator=torch.Generator().manual_seed(5))
    src[1, 4:] = 0
    _, head = generation_head(model)
    with torch.inference_mode():
        model.decoder.eos_id = int(greedy_uncached(model.decoder, head.logits, model.encoder(src), 6).tokens[0, 1])
        result = beam_search(model.decoder, head.logits, model.encoder(src), 3, 6, length_penalty=1.0)
        for row in range(3):
            expected, score = reference_beam(model, src[row][src[row] != 0], 3, 6, 1.0)
            assert result.tokens[row, :int(result.lengths[row])].tolist() == expected
            assert abs(float(result.scores[row]) - score) < 1e-4  # same log-probs: the reordered cache is right
    assert (result.lengths < 6).any(), "no beam ended in eos; the test would not cover finished beams"


def test_cache_select_copies_only_changed_slots_and_equals_a_full_reorder():
    from edh.decoders.transformer import DecoderCache

    generator = torch.Generator().manual_seed(3)
    T, N, L, H, Dh = 7, 6, 2, 2, 3
    cache = DecoderCache(torch.zeros(T, N, L, 2, H, Dh), torch.zeros(L, 2, N, H, 1, Dh), None)
    reference = torch.zeros_like(cache.self_kv)  # reordered in full at every select
    for position in range(T):
        written = torch.randn(N, L, 2, H, Dh, generator=generator)  # what a step writes
        cache.self_kv[position], reference[position] = written, written
        cache.length = position + 1
        for _ in range(2):  # twice without a step between: the second reorder must still be right
            rows = torch.randint(0, N, (N,), generator=generator)
            cache.select(rows)
            reference[:position + 1] = reference[:position + 1, rows]
            assert torch.equal(cache.self_kv[:position + 1], reference[:position + 1])
    moved = cache.moved_slots
    cache.select(torch.arange(N))  # every row continues itself: nothing to move
    assert cache.moved_slots == moved
    assert torch.equal(cache.self_kv, reference)

    shared = DecoderCache(torch.randn(T, 4, L, 2, H, Dh, generator=generator), torch.zeros(L, 2, 4, H, 1, Dh), None)
    shared.length = 4
    shared.select(torch.tensor([0, 0, 2, 3]))  # row 1 takes row 0's four positions
    assert shared.moved_slots == 4
    shared.length = 5
    shared.select(torch.tensor([1, 1, 2, 3]))  # rows 0 and 1 now differ only at the newest position
    assert shared.moved_slots == 5


def test_beam_of_one_is_greedy_and_batching_does_not_change_results():
    model = tiny_translator().eval()
    src = sources()
    _, head = generation_head(model)
    with torch.inference_mode():
        memory = model.encoder(src)
        greedy = greedy_search(model.decoder, head.logits, memory, 10)
        assert torch.equal(beam_search(model.decoder, head.logits, memory, 1, 10, 0.0).tokens, greedy.tokens)
        together = generate(model, src, beam_size=3, max_new_tokens=10)
        for row in range(src.shape[0]):
            alone = generate(model, src[row:row + 1][:, :int((src[row] != 0).sum())], beam_size=3, max_new_tokens=10)
            length = int(together.lengths[row])
            assert together.tokens[row, :length].tolist() == alone.tokens[0, :int(alone.lengths[0])].tolist()


def test_min_and_max_new_tokens():
    model = tiny_translator().eval()
    src = sources()
    _, head = generation_head(model)
    with torch.inference_mode():
        memory = model.encoder(src)
        model.decoder.eos_id = int(greedy_search(model.decoder, head.logits, memory, 4).tokens[0, 0])
        for beams in (1, 3):
            out = generate(model, src, beam_size=beams, max_new_tokens=9, min_new_tokens=6)
            assert out.tokens.shape[1] <= 9
            assert not (out.tokens[:, :6] == model.decoder.eos_id).any()


def test_generate_needs_a_step_decoder_and_fitting_lengths():
    assert generates(tiny_translator())
    classifier = edh.build(encoder={"name": "transformer", "vocab_size": V, "preset": "tiny"},
                           heads={"label": {"type": "classification", "num_classes": 3}})
    assert not generates(classifier)
    with pytest.raises(ValueError, match="step by step"):
        generate(classifier, sources())
    model = tiny_translator(max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        generate(model, sources(), max_new_tokens=20)


# ---- the StepDecoder contract: a second generating decoder -------------------------------------------
@dataclass
class GRUCache(StepCache):
    context: torch.Tensor
    hidden: torch.Tensor
    capacity: int
    length: int = 0

    def select(self, rows: torch.Tensor) -> None:
        self.hidden = self.hidden[rows]  # the context is the same for every beam of a source


class GRUDecoder(StepDecoder):
    """A toy `StepDecoder`: a GRU started from (and fed) the mean of the memory. Generation, export and
    the onnxruntime runner read only the contract, so it needs no edit in edh.ops or edh.export."""

    export_axes = {"context": {0: "rows"}, "hidden": {0: "rows"}}

    def __init__(self, in_spec: FeatureSpec, vocab_size: int, width: int = 32, max_len: int = 64) -> None:
        super().__init__(in_spec)
        self.embedding = nn.Embedding(vocab_size, width)
        self.start = nn.Linear(in_spec.width, width)
        self.cell = nn.GRUCell(width + in_spec.width, width)
        self.hidden_size, self.max_length = width, max_len
        self.out_spec = FeatureSpec("sequence", (width,))

    def _context(self, features: Sequence) -> torch.Tensor:
        memory, padding = features
        keep = (~padding).float()[..., None] if padding is not None else torch.ones_like(memory[..., :1])
        return (memory * keep).sum(1) / keep.sum(1).clamp(min=1)

    def forward(self, features: Sequence, decoder_input: torch.Tensor | None = None, **context) -> Sequence:
        memory = self.export_memory(features)
        state = self.export_initial_state(memory)
        out = []
        for t in range(decoder_input.shape[1]):
            hidden, state = self.export_step(decoder_input[:, t], memory, state)
            out.append(hidden)
        return Sequence(torch.stack(out, 1), decoder_input == self.pad_id)

    def init_cache(self, memory: Sequence, max_new_tokens: int, beam_size: int = 1) -> GRUCache:
        self.check_length(max_new_tokens)
        context = self._context(memory).repeat_interleave(beam_size, 0)
        return GRUCache(context, torch.tanh(self.start(context)), max_new_tokens)

    def step(self, tokens: torch.Tensor, cache: GRUCache) -> torch.Tensor:
        cache.hidden = self.cell(torch.cat([self.embedding(tokens), cache.context], -1), cache.hidden)
        cache.length += 1
        return cache.hidden

    def export_memory(self, memory: Sequence) -> dict[str, torch.Tensor]:
        return {"context": self._context(memory)}

    def export_initial_state(self, memory: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"hidden": torch.tanh(self.start(memory["context"]))}

    def export_step(self, tokens, memory, state):
        hidden = self.cell(torch.cat([self.embedding(tokens), memory["context"]], -1), state["hidden"])
        return hidden, {"hidden": hidden}


def gru_translator() -> edh.Model:
    model = edh.build(encoder={"name": "transformer", "vocab_size": V, "preset": "tiny"},
                      decoder={"name": "transformer", "vocab_size": V, "preset": "tiny"},
                      heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": V, "tie_embeddings": False,
                                        "beam_size": 3}})
    torch.manual_seed(0)
    model.decoder = GRUDecoder(model.encoder.out_spec, V)
    return model.eval()


def test_a_second_step_decoder_generates_through_the_contract():
    model = gru_translator()
    src = sources()
    _, head = generation_head(model)
    assert generates(model) and head.generation_defaults()["beam_size"] == 3
    with torch.inference_mode():
        memory = model.encoder(src)
        model.decoder.eos_id = int(greedy_uncached(model.decoder, head.logits, memory, 12).tokens[0, 2])
        reference = greedy_uncached(model.decoder, head.logits, memory, 12)
        assert torch.equal(greedy_search(model.decoder, head.logits, memory, 12).tokens, reference.tokens)
        result = generate(model, src, max_new_tokens=8)  # beam 3: the head's default
        for row in range(src.shape[0]):
            expected, score = reference_beam(model, src[row][src[row] != 0], 3, 8, 1.0)
            assert result.tokens[row, :int(result.lengths[row])].tolist() == expected
            assert abs(float(result.scores[row]) - score) < 1e-4
    with pytest.raises(ValueError, match="max_len"):
        generate(model, src, max_new_tokens=65)


def test_a_second_step_decoder_exports_and_generates_the_same(tmp_path):
    pytest.importorskip("onnxruntime")
    from edh.export.generation import OnnxSeq2Seq, export_seq2seq

    model = gru_translator()
    report = export_seq2seq(SimpleNamespace(model=model, info=DataInfo(input_kind="tokens")), tmp_path / "model.onnx", None, 17, 1e-4)
    assert [p.name for p in report.files] == ["model.onnx", "model.decoder_step.onnx"]
    assert any(n.startswith("beam search (beam 3)") and "tokens equal" in n for n in report.notes)
    names = [c.name for c in report.checks["model.decoder_step.onnx"]]
    assert names[:2] == ["logits (past 0)", "next.hidden (past 0)"]
    runtime = OnnxSeq2Seq.load(tmp_path / "model.onnx", model)
    src = sources()
    assert torch.equal(generate(runtime, src, max_new_tokens=10).tokens, generate(model, src, max_new_tokens=10).tokens)


# ---- tokenizer -----------------------------------------------------------------------------------------
TEXTS = ["the cat sat on the mat.", "le chat est sur le tapis !", "quatre-vingt-dix-neuf, mille", "the dog sat."] * 5


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenizer_round_trip_specials_and_save(kind, tmp_path):
    tokenizer = TextTokenizer.train(TEXTS, kind, vocab_size=60)
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    for text in TEXTS[:4]:
        ids = tokenizer.encode(text)
        assert min(ids) >= 4 and tokenizer.decode(ids + [2, 7, 7]) == text
    if kind == "char":
        assert len(tokenizer.encode("the cat")) == len("the cat") + 1  # one token per character, plus "▁"
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer.to_str())
    again = TextTokenizer.from_file(path)
    assert again.encode_batch(TEXTS) == tokenizer.encode_batch(TEXTS)
    assert TextTokenizer.train(TEXTS, kind, vocab_size=60).to_str() == tokenizer.to_str()  # deterministic


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="bpe, char"):
        TextTokenizer.train(TEXTS, "word")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a tokenizer file"):
        TextTokenizer.from_file(tmp_path / "bad.json")


# ---- data -----------------------------------------------------------------------------------------------
def test_numbers_splits_hold_out_test_numbers():
    bundle = build_data("numbers", {"max_number": 299, "target_language": "de"}, seed=0)
    train = {t for _, t in bundle.train.pairs}
    test_pairs = bundle.test.pairs
    assert len(test_pairs) == 30 and not any(t in train for _, t in test_pairs)
    assert ("two hundred and one", "zweihunderteins") in bundle.train.pairs + bundle.val.pairs + test_pairs
    info = bundle.info
    assert info.input_kind == "tokens" and info.extra["decoder_defaults"]["eos_id"] == 2
    assert "tokenizer.json" in bundle.files
    again = build_data("numbers", {"max_number": 299, "target_language": "de"}, seed=0)
    assert again.test.pairs == test_pairs and again.files == bundle.files


def test_numbers_unknown_language():
    with pytest.raises(ValueError, match="no language 'xx'"):
        build_data("numbers", {"target_language": "xx", "max_number": 20}, seed=0)


def test_collate_shifts_the_target_and_pads():
    bundle = build_data("numbers", {"max_number": 50}, seed=0)
    items = [bundle.train[0], bundle.train[1]]
    src, targets, context = collate_translation(items, pad_id=0)
    full = [t for _, t in items]
    for row, target in enumerate(full):
        n = len(target) - 1
        assert torch.equal(context["decoder_input"][row, :n], target[:-1])  # bos + tokens
        assert torch.equal(targets["tokens"][row, :n], target[1:])  # tokens + eos
        assert (targets["tokens"][row, n:] == 0).all()
    assert src.shape[0] == 2 and (src[:, 0] != 0).all()


def test_tsv_bad_lines_are_reported_by_line_number(tmp_path, caplog):
    path = tmp_path / "pairs.tsv"
    path.write_bytes("hello\thallo\nno tab here\n\tleer\nok\tgut\nbad \xff\tx\n".encode("latin-1"))  # line 5: not UTF-8
    with pytest.raises(ValueError) as error:
        read_tsv(path)
    message = str(error.value)
    assert "3 bad lines" in message and "line 2: 1 column" in message and "line 3: empty source" in message
    assert "line 5: not UTF-8" in message and "skip_bad_lines" in message
    with caplog.at_level(logging.WARNING, logger="edh"):
        pairs = read_tsv(path, skip_bad_lines=True)
    assert pairs == [("hello", "hallo"), ("ok", "gut")]
    assert "line 2" in caplog.text and "line 5" in caplog.text


def test_tsv_dataset_with_held_out_files(tmp_path):
    lines = "".join(f"word {i}\tWort {i}\n" for i in range(40))
    (tmp_path / "train.tsv").write_text(lines)
    (tmp_path / "test.tsv").write_text("word 99\tWort 99\n")
    bundle = build_data("tsv", {"path": str(tmp_path / "train.tsv"), "test_path": str(tmp_path / "test.tsv"),
                                "vocab_size": 50}, seed=0)
    assert bundle.test.pairs == [("word 99", "Wort 99")] and len(bundle.train) + len(bundle.val) == 40
    with pytest.raises(DataFilesMissingError, match="does not exist"):
        build_data("tsv", {"path": str(tmp_path / "missing.tsv")}, seed=0)


def test_ding_dictionary_pairs(tmp_path):
    path = tmp_path / "de-en"
    path.write_text(
        "# comment\n"
        "Haus {n} | Das Haus ist sehr groß. :: house | The house is very big.\n"
        "Ich habe heute keine Zeit {adv}; Heute nicht :: I have no time today [coll.]\n"
        "ungleich | zwei Einträge :: only one\n", encoding="utf-8")
    assert read_ding_pairs(path, min_words=3, max_words=10) == [
        ("Das Haus ist sehr groß.", "The house is very big."), ("Ich habe heute keine Zeit", "I have no time today")]
    with pytest.raises(DataFilesMissingError, match="apt-get install trans-de-en"):
        build_data("de-en", {"path": str(tmp_path / "nowhere")}, seed=0)


def test_resolve_spec_fills_vocabulary_and_special_tokens():
    from edh.train.resolve import resolve_spec

    bundle = build_data("numbers", {"max_number": 99}, seed=0)
    spec = RunSpec.model_validate({
        "model": {"encoder": {"name": "transformer", "preset": "tiny"},
                  "decoder": {"name": "transformer", "preset": "tiny"},
                  "heads": {"tokens": {"type": "lm", "source": "decoder"}}},
        "data": {"name": "numbers", "max_number": 99}})
    resolved = resolve_spec(spec, bundle.info)
    vocab = bundle.info.extra["vocab_size"]
    assert resolved.model.encoder.options()["vocab_size"] == vocab
    assert resolved.model.decoder.options()["eos_id"] == 2
    assert resolved.model.heads["tokens"].options()["vocab_size"] == vocab
    spec.model.encoder = spec.model.encoder.model_validate({"name": "transformer", "vocab_size": vocab + 5})
    with pytest.raises(SpecError, match="model.encoder.vocab_size"):
        resolve_spec(spec, bundle.info)
