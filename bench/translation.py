"""edh's Transformer translator against Hugging Face transformers' MarianMTModel of the same size.

Run: ``python bench/translation.py [--repeats N] [--quick] [--threads T] [--max-wait S]`` (needs ``pip install transformers``,
the ``bench`` extra; no weights are downloaded: both models are built from a config with random,
seeded weights, in one process).

Both models: vocabulary 8,000 (shared, tied embeddings), d_model 256, 3 + 3 layers, 4 heads, FFN 1024,
ReLU, post-LN (Marian's layout), sinusoidal positions, embeddings scaled by sqrt(d_model), dropout 0.1
on sub-layer outputs only.

- greedy: batch 8 sources of 20-32 tokens (right-padded), exactly 64 new tokens each (eos forbidden
  until then: HF ``min_new_tokens=64``, edh ``min_new_tokens=64``), HF ``generate`` with its cache vs
  edh ``generate`` (preallocated KV cache); tokens/s = 8 x 64 / seconds.
- beam: the same with 4 beams (length penalty 1.0); tokens/s counts the 8 x 64 returned tokens.
- both generation groups also run each model with its weights cast to bfloat16 (``model.to(torch.bfloat16)``),
  as extra rows; the targets are for fp32 against fp32.
- train step: batch 32, 32 source + 32 target tokens, forward + cross-entropy + backward + AdamW,
  train mode; tokens/s counts target tokens.
- ``--compiled-step`` adds a greedy row with edh's decoder step and output layer compiled as one graph
  (``torch.compile``, dynamic positions; its tokens checked equal to eager's first): the candidate
  edh does not pick by itself, since compiling takes tens of seconds at first use.
- ``--dispatch-variants`` adds rows where the decoder's linears all take one kernel (``plain`` F.linear or
  oneDNN ``packed``), the output layer keeping its measured choice: how the per-shape decisions, timed
  alone with warm caches, compare with each fixed choice inside the decoding loop.
- where edh's greedy step goes: each linear of the step (the decoder's 18 and the output layer) timed at
  the step's shapes, hot (called back to back) and cold (right after a 64 MiB write evicts the caches),
  against the measured time per token and the machine's stream bandwidth; the same greedy step on a
  tiny model (the cost of Python and per-op dispatch); and the share of its cache beam search copies
  when beams change parents (``--no-profile`` skips all three).

Contenders of a group run round-robin (``common.measure``); medians reported, results also in
``bench/results/translation.json``.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from typing import Any, Callable

import torch
from common import (Contender, apply_threads, base_parser, environment, format_ratio, hot_and_cold_us, measure,
                    noisy_warning, print_table, ratio, seed_everything, stream_gb_per_s, summarize, write_json)

import edh
from edh.layers import dispatch, packed
from edh.ops.generation import generate, greedy_search

VOCAB, D_MODEL, LAYERS, HEADS, FFN = 8000, 256, 3, 4, 1024
PAD, BOS, EOS = 0, 1, 2
GEN_BATCH, NEW_TOKENS, BEAMS = 8, 64, 4
TRAIN_BATCH, TRAIN_LEN = 32, 32
COLUMNS = ["name", "items_per_s", "ms_per_step", "best_items_per_s", "quiet_samples"]


def build_edh(vocab: int = VOCAB, d_model: int = D_MODEL, heads: int = HEADS, ffn: int = FFN) -> edh.Model:
    seed_everything(0)
    size = {"vocab_size": vocab, "d_model": d_model, "num_layers": LAYERS, "num_heads": heads, "ffn_dim": ffn,
            "dropout": 0.1, "activation": "relu", "norm_first": False, "pad_id": PAD}
    return edh.build(encoder={"name": "transformer", **size},
                     decoder={"name": "transformer", **size, "bos_id": BOS, "eos_id": EOS},
                     heads={"tokens": {"type": "lm", "source": "decoder", "vocab_size": vocab, "pad_id": PAD,
                                       "label_smoothing": 0.0}})


def build_marian():
    from transformers import MarianConfig, MarianMTModel

    seed_everything(0)
    config = MarianConfig(
        vocab_size=VOCAB, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
        activation_function="relu", scale_embedding=True, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        max_position_embeddings=512, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
        decoder_start_token_id=BOS, forced_eos_token_id=None, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True)
    return MarianMTModel(config)


def sources(batch: int, longest: int, shortest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random source ids ``(B, longest)`` right-padded to lengths in ``shortest..longest``, and the mask."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (batch, longest), generator=generator)
    lengths = torch.linspace(longest, shortest, batch).round().long()
    mask = torch.arange(longest)[None, :] < lengths[:, None]
    ids[:, -1] = torch.where(lengths == longest, torch.tensor(EOS), ids[:, -1])
    return ids.masked_fill(~mask, PAD), mask.long()


def edh_generate(model, src: torch.Tensor, beams: int) -> Callable[[], Any]:
    def step() -> Any:
        return generate(model, src, beam_size=beams, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                        length_penalty=1.0).tokens

    return step


class CompiledStep:
    """edh's decoder with its step and the LM head's logits compiled as one graph (dynamic positions)."""

    def __init__(self, model) -> None:
        self.decoder, head = model.decoder, model.heads["tokens"]
        self.compiled = torch.compile(lambda tokens, cache: head.logits(self.decoder.step(tokens, cache)),
                                      dynamic=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoder, name)

    def step(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        return self.compiled(tokens, cache)


def edh_compiled_greedy(model, src: torch.Tensor) -> Callable[[], Any]:
    stepper = CompiledStep(model)

    def step() -> Any:
        with torch.inference_mode():
            memory = model.decoder.memory(model.encoder(src))
            return greedy_search(stepper, lambda logits: logits, memory, NEW_TOKENS, NEW_TOKENS).tokens

    started = time.perf_counter()
    tokens = step()
    same = torch.equal(tokens, edh_generate(model, src, 1)())
    print(f"compiled step: first call (compiling) {time.perf_counter() - started:.1f} s; tokens equal to eager's: "
          f"{same}", flush=True)
    if not same:
        raise SystemExit("the compiled step's tokens differ from eager's")
    return step


def edh_generate_decoder_linears(model, src: torch.Tensor, beams: int, kernel: str) -> Callable[[], Any]:
    """`edh_generate` with every linear of the decoder step on ``kernel`` (the output layer as measured)."""
    vocab = model.heads["tokens"].weight.shape[0]

    def step() -> Any:
        measured = dispatch.decisions()
        dispatch.pin({key: kernel for key in measured if key[0] == "linear" and key[1][2] != vocab})
        try:
            return edh_generate(model, src, beams)()
        finally:
            dispatch.pin(measured)

    return step


def hf_generate(model, src: torch.Tensor, mask: torch.Tensor, beams: int) -> Callable[[], Any]:
    def step() -> Any:
        with torch.inference_mode():
            return model.generate(input_ids=src, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                  min_new_tokens=NEW_TOKENS, num_beams=beams, do_sample=False, use_cache=True,
                                  length_penalty=1.0, early_stopping=False)

    return step


def edh_train_step(model, src, tgt_in, labels) -> Callable[[], float]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        outputs = model(src, decoder_input=tgt_in)
        loss = model.heads["tokens"].loss(outputs["tokens"], labels)["ce"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def hf_train_step(model, src, mask, tgt_in, labels) -> Callable[[], float]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    hf_labels = labels.masked_fill(labels == PAD, -100)

    def step() -> float:
        loss = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt_in, labels=hf_labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def _key(row: dict[str, Any]) -> str:
    """``edh`` / ``hf`` (+ `` bf16``, `` compiled``) from a result row."""
    return row["name"].split()[0] + (" bf16" if row.get("dtype") == "bf16" else "") + \
        (" compiled" if row.get("compiled") else "") + (f" {row['variant']}" if row.get("variant") else "")


def check_same_size(edh_model, marian) -> dict[str, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 - shared weights counted once
    counts = {"edh": count(edh_model), "marian": count(marian)}
    print(f"parameters: edh {counts['edh']:,}  marian {counts['marian']:,} (marian's count includes its two "
          "fixed sinusoidal position tables, 2 x 512 x 256 = 262,144)", flush=True)
    return counts


def step_linears(model) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """``(kind, weight, bias)`` of every linear a greedy step of edh's translator runs, in step order."""
    out = []
    for layer in model.decoder.layers:
        out += [("self-attn qkv", layer.self_attn.qkv), ("self-attn out", layer.self_attn.out),
                ("cross-attn q", layer.cross_attn.q), ("cross-attn out", layer.cross_attn.out),
                ("ffn 1", layer.mlp.fc1), ("ffn 2", layer.mlp.fc2)]
    out = [(kind, linear.weight, linear.bias) for kind, linear in out]
    head = model.heads["tokens"]
    return out + [("output layer", head.weight, head.bias)]


def step_profile(model, ms_per_token: float) -> dict[str, Any]:
    """Hot and cold time of each linear of a greedy step at batch ``GEN_BATCH`` (as `generate` runs them,
    through `edh.layers.packed`), summed per kind, against the measured time per token."""
    kinds: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for kind, weight, bias in step_linears(model):
            x = torch.randn(GEN_BATCH, 1, weight.shape[1])
            hot, cold = hot_and_cold_us(lambda: packed.linear(x, weight, bias))
            row = kinds.setdefault(kind, {"weights_mb": 0.0, "hot_us": 0.0, "cold_us": 0.0})
            row["weights_mb"] += weight.numel() * weight.element_size() / 1e6
            row["hot_us"] += hot
            row["cold_us"] += cold
    total = {key: sum(row[key] for row in kinds.values()) for key in ("weights_mb", "hot_us", "cold_us")}
    bandwidth = stream_gb_per_s()
    print(f"\nwhere edh's greedy step goes (batch {GEN_BATCH}; per token: {ms_per_token * 1000:.0f} us measured, "
          "encoder included)")
    print(f"{'linears':16s} {'weights MB':>10s} {'hot us':>8s} {'cold us':>8s}")
    for kind, row in kinds.items():
        print(f"{kind:16s} {row['weights_mb']:10.2f} {row['hot_us']:8.0f} {row['cold_us']:8.0f}")
    print(f"{'all':16s} {total['weights_mb']:10.2f} {total['hot_us']:8.0f} {total['cold_us']:8.0f}")
    floor_us = total["weights_mb"] / bandwidth * 1e3
    print(f"the step's linears take {100 * total['cold_us'] / (ms_per_token * 1000):.0f} % of a token's time with "
          f"their weights cold ({100 * total['hot_us'] / (ms_per_token * 1000):.0f} % hot); streaming "
          f"{total['weights_mb']:.1f} MB at this machine's {bandwidth:.1f} GB/s would take {floor_us:.0f} us")
    overhead = step_overhead_us()
    print(f"the same greedy step with next to no arithmetic (d_model 16, vocabulary 64, 3 + 3 layers): {overhead:.0f} us "
          "per token: what Python and PyTorch's per-op dispatch cost (hot)")
    return {"kinds": kinds, "total": total, "stream_gb_per_s": bandwidth, "ms_per_token": ms_per_token,
            "stream_floor_us": floor_us, "tiny_model_us_per_token": overhead}


def step_overhead_us() -> float:
    """Median microseconds per token of greedy generation on a tiny model of the same depth: the step's
    Python and per-op dispatch, its arithmetic negligible."""
    tiny = build_edh(vocab=64, d_model=16, heads=2, ffn=32).eval()
    src = sources(GEN_BATCH, 32, 20)[0].clamp(max=63)
    run = edh_generate(tiny, src, 1)
    for _ in range(3):
        run()
    seconds = []
    for _ in range(15):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) / NEW_TOKENS * 1e6


def beam_reorder_share(model, src: torch.Tensor) -> dict[str, float]:
    """How much of its self-attention cache beam search copies when beams change parents
    (``DecoderCache.select`` copies only the slots whose keys / values change), against copying every
    written position of every row at every step."""
    decoder, caches = model.decoder, []
    init_cache = decoder.init_cache

    def capturing(*args, **kwargs):
        caches.append(init_cache(*args, **kwargs))
        return caches[-1]

    decoder.init_cache = capturing
    try:
        edh_generate(model, src, BEAMS)()
    finally:
        del decoder.init_cache
    cache = caches[0]
    rows = cache.self_kv.shape[1]
    every = rows * cache.length * (cache.length + 1) // 2
    share = cache.moved_slots / every
    print(f"beam {BEAMS}: the cache reorders copied {cache.moved_slots:,} of the {every:,} slots a full reorder "
          f"per step would copy ({100 * share:.1f} %)")
    return {"moved_slots": cache.moved_slots, "full_reorder_slots": every, "share": share}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--compiled-step", action="store_true",
                        help="add a greedy row with the decoder step compiled (torch.compile)")
    parser.add_argument("--dispatch-variants", action="store_true",
                        help="add rows with the decoder's linears all plain / all packed")
    parser.add_argument("--no-profile", action="store_true", help="skip the hot / cold profile of edh's step")
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    if args.quick:
        args.max_wait = 0.0
    env = environment()
    print(f"torch {env['torch']}, {threads} threads, {env['cpu']}; {repeats} round-robin repeats, medians",
          flush=True)
    import transformers

    env["transformers"] = transformers.__version__
    edh_model, marian = build_edh().eval(), build_marian().eval()
    counts = check_same_size(edh_model, marian)
    src, mask = sources(GEN_BATCH, 32, 20)
    report: dict[str, Any] = {"environment": env, "repeats": repeats, "parameters": counts, "groups": {}}
    edh_bf16, marian_bf16 = (copy.deepcopy(m).to(torch.bfloat16) for m in (edh_model, marian))
    tokens = GEN_BATCH * NEW_TOKENS
    groups: dict[str, list[Contender]] = {}
    for group, beams in (("greedy", 1), ("beam", BEAMS)):
        kind = "greedy" if beams == 1 else f"beam {beams}"
        groups[group] = [
            Contender(f"hf MarianMTModel.generate {kind} (cache)", hf_generate(marian, src, mask, beams), tokens),
            Contender(f"edh generate {kind} (KV cache)", edh_generate(edh_model, src, beams), tokens),
            Contender(f"hf {kind}, bf16 weights", hf_generate(marian_bf16, src, mask, beams), tokens,
                      {"dtype": "bf16"}),
            Contender(f"edh {kind}, bf16 weights", edh_generate(edh_bf16, src, beams), tokens, {"dtype": "bf16"}),
        ]
        if args.dispatch_variants:
            groups[group] += [Contender(f"edh {kind}, decoder linears all {kernel}",
                                        edh_generate_decoder_linears(edh_model, src, beams, kernel), tokens,
                                        {"variant": kernel}) for kernel in ("plain", "packed")]
        if beams == 1 and args.compiled_step:
            groups[group].append(Contender("edh generate greedy, step compiled", edh_compiled_greedy(edh_model, src),
                                           tokens, {"compiled": True}))
    train_src, train_mask = sources(TRAIN_BATCH, TRAIN_LEN, TRAIN_LEN // 2)
    target = torch.randint(4, VOCAB, (TRAIN_BATCH, TRAIN_LEN + 1), generator=torch.Generator().manual_seed(2))
    target[:, 0] = BOS
    tgt_in, labels = target[:, :-1], target[:, 1:]
    train_items = TRAIN_BATCH * TRAIN_LEN
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for group, contenders in groups.items():
        rows = summarize(contenders, measure(contenders, repeats, calls=1, warmup=1, max_wait=args.max_wait))
        print_table(rows, COLUMNS, f"\n{group}: batch {GEN_BATCH}, {NEW_TOKENS} new tokens (items = tokens)")
        if noisy_warning(rows):
            print(noisy_warning(rows))
        report["groups"][group] = rows
        results[group] = {_key(r): (r["items_per_s"], r["best_items_per_s"]) for r in rows}
    report["dispatch"] = {f"{op} {shape}": choice for (op, shape), choice in dispatch.decisions().items()}
    print("\nedh's measured dispatch on this machine (edh.layers.dispatch):")
    print("\n".join(f"  {key}: {choice}" for key, choice in report["dispatch"].items()), flush=True)
    if not args.no_profile:
        edh_greedy = next(r for r in report["groups"]["greedy"] if r["name"].startswith("edh generate"))
        report["step_profile"] = step_profile(edh_model, edh_greedy["ms_per_step"] / NEW_TOKENS)
        report["beam_reorder"] = beam_reorder_share(edh_model, src)
    del groups
    gc.collect()
    edh_train, marian_train = build_edh(), build_marian()
    contenders = [Contender("hf MarianMTModel train step", hf_train_step(marian_train, train_src, train_mask, tgt_in,
                                                                         labels), train_items),
                  Contender("edh train step", edh_train_step(edh_train, train_src, tgt_in, labels), train_items)]
    rows = summarize(contenders, measure(contenders, repeats, calls=2, warmup=2, max_wait=args.max_wait))
    print_table(rows, COLUMNS, f"\ntrain step: batch {TRAIN_BATCH}, {TRAIN_LEN}+{TRAIN_LEN} tokens, AdamW "
                               "(items = target tokens)")
    if noisy_warning(rows):
        print(noisy_warning(rows))
    report["groups"]["train"] = rows
    results["train"] = {_key(r): (r["items_per_s"], r["best_items_per_s"]) for r in rows}
    targets = {"greedy": 2.0, "beam": 1.5, "train": 1.0}

    def compare(group: str, ours: str, theirs: str, label: str, target: float | None) -> dict[str, Any]:
        a, b = results[group][ours], results[group][theirs]
        return ratio(f"{label}, {group}", a[0] / b[0], target, a[1] / b[1])

    report["ratios"] = [compare(g, "edh", "hf", "edh / hf (fp32)", targets[g]) for g in ("greedy", "beam", "train")]
    report["ratios"] += [compare(g, "edh bf16", "hf bf16", "edh / hf, both bf16 weights", None)
                         for g in ("greedy", "beam")]
    report["ratios"] += [compare(g, "edh bf16", "hf", "edh bf16 weights / hf fp32", None) for g in ("greedy", "beam")]
    for kernel in ("plain", "packed"):
        report["ratios"] += [compare(g, f"edh {kernel}", "edh", f"edh decoder linears all {kernel} / as measured",
                                     None) for g in ("greedy", "beam") if f"edh {kernel}" in results[g]]
    if "edh compiled" in results["greedy"]:
        report["ratios"].append(compare("greedy", "edh compiled", "edh", "edh step compiled / eager", None))
    print("\nratios (medians)")
    print("\n".join(format_ratio(r) for r in report["ratios"]), flush=True)
    print(f"\nwrote {write_json('translation', report)}")


if __name__ == "__main__":
    main()
