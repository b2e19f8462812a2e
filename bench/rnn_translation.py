"""edh's LSTM translator: quality and training time of its config, and greedy decoding speed against
the step-by-step loop a PyTorch user writes from the official tutorial, with the same weights.

Run: ``python bench/rnn_translation.py [--repeats N] [--quick] [--threads T] [--max-wait S] [--skip-train]``

- train: ``configs/translator-numbers-lstm.yaml`` trained as ``edh train`` does (English -> French
  number words, held-out test numbers); prints the wall time (target <= 300 s, with this process's CPU
  time / 2 and the cores other processes used, as bench/training.py measures them) and the test BLEU,
  chrF and exact match of greedy decoding (target BLEU >= 95). ``--quick``: 10 steps on numbers up to
  300, a smoke run of the code path only.
- greedy: one seq2seq model (vocabulary 8,000; embeddings 256; a bidirectional LSTM encoder of 256 per
  direction; a 2-layer LSTM decoder of 256 with Luong "general" attention, tied output layer), random
  seeded weights, batch 8 sources of 20-32 tokens (right-padded), exactly 64 new tokens each (eos
  forbidden until then). edh ``generate`` (greedy over the cached step: attention keys computed once
  per source, oneDNN-packed output layer) against `TutorialSeq2Seq`: the same model written as in
  PyTorch's "NLP From Scratch: Translation with a Sequence to Sequence Network and Attention"
  (``nn.LSTM`` called one step at a time, the attention recomputed from the encoder outputs at every
  step, ``torch.no_grad``, ``topk(1)``), loaded with edh's weights; both must produce the same tokens.
  tokens/s = 8 x 64 / seconds; target ratio >= 1.5.

Contenders run round-robin (``common.measure``); medians reported, results also in
``bench/results/rnn_translation.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from common import (Contender, apply_threads, base_parser, environment, format_ratio, measure, noisy_warning,
                    print_table, ratio, seed_everything, summarize, write_json)
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import edh
from edh.ops.generation import generate

CONFIG = "translator-numbers-lstm.yaml"
VOCAB, EMBEDDING, ENCODER_HIDDEN, DECODER_HIDDEN, DECODER_LAYERS = 8000, 256, 256, 256, 2
PAD, BOS, EOS = 0, 1, 2
GEN_BATCH, NEW_TOKENS = 8, 64
COLUMNS = ["name", "items_per_s", "ms_per_step", "best_items_per_s", "quiet_samples"]


# ---- (a) the config, trained -------------------------------------------------------------------------------
def train_config(out: Path, quick: bool) -> dict[str, Any]:
    from training import epochs_done, timed_train

    from edh.workflows.demo import load_config
    from edh.workflows.translate import evaluate_translation

    overrides = {"train.epochs": 1, "data.max_number": 300} if quick else {}
    limits = {"max_steps": 10} if quick else {}
    run, times = timed_train(load_config(CONFIG, overrides), out, **limits)
    evaluation = evaluate_translation(run, "test", progress=False, examples=5)
    metrics = evaluation.metrics["tokens"]
    met = None if quick else (metrics["bleu"] >= 95.0 and times["seconds"] <= 300)
    return {"config": f"configs/{CONFIG}", "quick": quick, "epochs_run": epochs_done(out), **times,
            "test_sentences": evaluation.count, **{k: round(v, 4) for k, v in metrics.items()},
            "targets": {"bleu": 95.0, "seconds": 300}, "met": met, "examples": evaluation.reports["tokens"]}


# ---- (b) greedy decoding: edh against the tutorial's loop ----------------------------------------------------
def build_edh() -> edh.Model:
    seed_everything(0)
    return edh.build(
        encoder={"name": "lstm", "vocab_size": VOCAB, "embedding_dim": EMBEDDING, "hidden_size": ENCODER_HIDDEN,
                 "bidirectional": True, "pad_id": PAD},
        decoder={"name": "lstm", "vocab_size": VOCAB, "embedding_dim": DECODER_HIDDEN, "hidden_size": DECODER_HIDDEN,
                 "num_layers": DECODER_LAYERS, "pad_id": PAD, "bos_id": BOS, "eos_id": EOS},
        heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": VOCAB, "pad_id": PAD}}).eval()


class TutorialEncoder(nn.Module):
    """The tutorial's ``EncoderRNN`` (embedding -> RNN over the batch), bidirectional LSTM, packed by length."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, EMBEDDING, padding_idx=PAD)
        self.lstm = nn.LSTM(EMBEDDING, ENCODER_HIDDEN, batch_first=True, bidirectional=True)

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = src == PAD
        lengths = (~mask).sum(1)
        packed = pack_padded_sequence(self.embedding(src), lengths, batch_first=True, enforce_sorted=False)
        outputs, _ = self.lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        return outputs, mask


class TutorialDecoder(nn.Module):
    """The tutorial's ``AttnDecoderRNN``, with Luong's "general" score in place of Bahdanau's: each step
    embeds the previous token, runs the LSTM one position, scores the encoder outputs (projected again at
    every step, as the tutorial's attention does), and combines the context with the LSTM output."""

    def __init__(self) -> None:
        super().__init__()
        memory = 2 * ENCODER_HIDDEN
        self.embedding = nn.Embedding(VOCAB, DECODER_HIDDEN, padding_idx=PAD)
        self.lstm = nn.LSTM(DECODER_HIDDEN, DECODER_HIDDEN, DECODER_LAYERS, batch_first=True)
        self.bridge = nn.Linear(memory, DECODER_LAYERS * 2 * DECODER_HIDDEN)
        self.Wa = nn.Linear(memory, DECODER_HIDDEN, bias=False)
        self.combine = nn.Linear(memory + DECODER_HIDDEN, DECODER_HIDDEN)
        self.out = nn.Linear(DECODER_HIDDEN, VOCAB, bias=False)

    def forward_step(self, token, state, encoder_outputs, mask):
        embedded = self.embedding(token)  # (B, 1, H)
        output, state = self.lstm(embedded, state)
        keys = self.Wa(encoder_outputs)
        scores = torch.bmm(output, keys.transpose(1, 2)).masked_fill(mask[:, None, :], float("-inf"))
        context = torch.bmm(F.softmax(scores, dim=-1), encoder_outputs)
        output = torch.tanh(self.combine(torch.cat((context, output), dim=2)))
        return self.out(output), state

    def forward(self, encoder_outputs, mask, max_length):
        B = encoder_outputs.shape[0]
        keep = (~mask).float()[..., None]
        mean = (encoder_outputs * keep).sum(1) / keep.sum(1)
        start = torch.tanh(self.bridge(mean)).view(B, DECODER_LAYERS, 2, DECODER_HIDDEN).permute(2, 1, 0, 3)
        state = (start[0].contiguous(), start[1].contiguous())
        decoder_input = torch.full((B, 1), BOS, dtype=torch.long)
        tokens = []
        for _ in range(max_length):
            logits, state = self.forward_step(decoder_input, state, encoder_outputs, mask)
            logits[..., EOS] = float("-inf")  # a fixed length, as min_new_tokens does for edh
            _, topi = logits.topk(1)
            decoder_input = topi.squeeze(-1).detach()
            tokens.append(decoder_input)
        return torch.cat(tokens, dim=1)


class TutorialSeq2Seq(nn.Module):
    def __init__(self, model: edh.Model) -> None:
        super().__init__()
        self.encoder, self.decoder = TutorialEncoder(), TutorialDecoder()
        with torch.no_grad():  # edh's weights, moved over one by one
            self.encoder.embedding.weight.copy_(model.encoder.token_embedding.weight)
            self.encoder.lstm.load_state_dict(model.encoder.rnn.rnn.state_dict())
            d = model.decoder
            self.decoder.embedding.weight.copy_(d.target_embedding().weight)
            self.decoder.lstm.load_state_dict(d.rnn.state_dict())
            self.decoder.bridge.load_state_dict(d.bridge.state_dict())
            self.decoder.Wa.weight.copy_(d.attention.proj.weight)
            self.decoder.combine.load_state_dict(d.combine.state_dict())
            self.decoder.out.weight.copy_(model.heads["tokens"].weight)

    def translate(self, src: torch.Tensor, max_length: int) -> torch.Tensor:
        with torch.no_grad():
            encoder_outputs, mask = self.encoder(src)
            return self.decoder(encoder_outputs, mask, max_length)


def sources(batch: int, longest: int, shortest: int) -> torch.Tensor:
    """Random source ids ``(B, longest)`` right-padded to lengths in ``shortest..longest``."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (batch, longest), generator=generator)
    lengths = torch.linspace(longest, shortest, batch).round().long()
    return ids.masked_fill(torch.arange(longest)[None, :] >= lengths[:, None], PAD)


def edh_greedy(model: edh.Model, src: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: generate(model, src, beam_size=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS).tokens


def tutorial_greedy(model: TutorialSeq2Seq, src: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: model.translate(src, NEW_TOKENS)


def greedy_group(repeats: int, max_wait: float) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    model = build_edh()
    tutorial = TutorialSeq2Seq(model).eval()
    src = sources(GEN_BATCH, 32, 20)
    ours, theirs = edh_greedy(model, src)(), tutorial_greedy(tutorial, src)()
    same = int((ours == theirs).all(dim=1).sum())
    print(f"same tokens as the tutorial loop: {same} of {GEN_BATCH} rows (64 tokens each)", flush=True)
    tokens = GEN_BATCH * NEW_TOKENS
    contenders = [Contender("tutorial loop greedy (no cache, torch.no_grad)", tutorial_greedy(tutorial, src), tokens),
                  Contender("edh generate greedy (cached step)", edh_greedy(model, src), tokens)]
    rows = summarize(contenders, measure(contenders, repeats, calls=1, warmup=1, max_wait=max_wait))
    edh_row, tutorial_row = rows[1], rows[0]
    result = ratio("edh / tutorial loop, greedy tokens/s", edh_row["items_per_s"] / tutorial_row["items_per_s"], 1.5,
                   edh_row["best_items_per_s"] / tutorial_row["best_items_per_s"])
    return rows, result, same


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--skip-train", action="store_true", help="only the greedy-speed group")
    parser.add_argument("--out", default="runs/bench", help="where the run folder goes")
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    if args.quick:
        args.max_wait = 0.0
    env = environment()
    print(f"torch {env['torch']}, {threads} threads, {env['cpu']}; {repeats} round-robin repeats, medians",
          flush=True)
    report: dict[str, Any] = {"environment": env, "repeats": repeats}
    if not args.skip_train:
        trained = train_config(Path(args.out) / "rnn-translation", args.quick)
        report["train"] = trained
        verdict = "-" if trained["met"] is None else ("met" if trained["met"] else "MISSED")
        print(f"\ntrain {trained['config']}{' (--quick: 10 steps, numbers <= 300)' if args.quick else ''}: "
              f"{trained['seconds']:.1f} s wall ({trained['alone_on_2_cores_s']:.1f} s of CPU / 2, others used "
              f"{trained['others_cores']:.2f} cores), {trained['epochs_run']} epochs; test ({trained['test_sentences']}"
              f" sentences, greedy) BLEU {trained['bleu']:.2f}  chrF {trained['chrf']:.2f}  exact "
              f"{trained['exact_match']:.3f}   targets BLEU >= 95 within 300 s: {verdict}")
        print("\n".join("  " + line for line in trained["examples"]), flush=True)
    rows, result, same = greedy_group(repeats, args.max_wait)
    print_table(rows, COLUMNS, f"\ngreedy: batch {GEN_BATCH}, {NEW_TOKENS} new tokens (items = tokens)")
    if noisy_warning(rows):
        print(noisy_warning(rows))
    report["greedy"] = {"rows": rows, "same_rows": same, "ratio": result}
    print("\nratio (medians)\n" + format_ratio(result), flush=True)
    print(f"\nwrote {write_json('rnn_translation', report)}")


if __name__ == "__main__":
    main()
