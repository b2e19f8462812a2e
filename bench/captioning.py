"""Image to text on ``scene-captions``: edh's captioner against Hugging Face ``VisionEncoderDecoderModel``.

    python bench/captioning.py [--budget 600] [--skip-hf] [--out runs/bench/captioning] [--quick]

1. edh: ``configs/captioner-scenes.yaml`` (ResNet-18 encoder, a small Transformer decoder over the
   stride-8 cells, LM head) trained as ``edh train`` does, within ``--budget`` seconds; then test
   exact match, CER and BLEU (``edh eval``, greedy). Target: exact match >= 0.90 in <= 10 minutes.
2. Hugging Face: ``VisionEncoderDecoderModel`` = a ViT encoder (patch 8 on the 32 x 128 strips: 4 x 16
   patches) + a BERT decoder with cross-attention, sized to about edh's parameter count, trained
   from scratch on the same images and token ids (the edh run's tokenizer) with AdamW, the same
   batch size, learning rate and cosine schedule, for the same wall time edh's training took.
   Exact match / CER / BLEU from ``generate`` (greedy) on the same test images. Target: edh >= HF.
3. Greedy captioning throughput on the test images (images/s, batch 64), edh ``generate`` vs HF
   ``generate``, round-robin medians in one process. Target: edh >= 2x HF.

Prints whether the machine was quiet (other processes' cores during each part); writes
bench/results/captioning.json.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from common import Contender, environment, measure, summarize, write_json
from training import machine_busy_seconds, own_cpu_seconds, timed_train

from edh.workflows.demo import load_config
from edh.workflows.evaluate import evaluate_run
from edh.workflows.translate import Translator, translation_scores


def hf_model(vocab: int, tokenizer, image_size: tuple[int, int], hidden: int, layers: int):
    from transformers import BertConfig, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    encoder = ViTConfig(image_size=list(image_size), patch_size=8, num_channels=3, hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                        intermediate_size=4 * hidden)
    decoder = BertConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256, max_position_embeddings=64, is_decoder=True, add_cross_attention=True,
                         pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id = tokenizer.bos_id, tokenizer.pad_id
    config.eos_token_id = tokenizer.eos_id
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = tokenizer.bos_id
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = tokenizer.pad_id, tokenizer.eos_id
    return model


def hf_train(model, bundle, seconds: float, batch_size: int, lr: float, steps_hint: int) -> dict:
    """AdamW + warmup / cosine, the batches edh trains on, until ``seconds`` of wall time have passed."""
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=batch_size, shuffle=True, collate_fn=bundle.collate_fn,
                                         generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps_hint // 12)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps_hint))))
    model.train()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for images, targets, context in loader:
            labels = targets["tokens"].masked_fill(targets["tokens"] == 0, -100)
            loss = model(pixel_values=images, decoder_input_ids=context["decoder_input"], labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1)}


def hf_captions(model, images: torch.Tensor, tokenizer, max_new_tokens: int, batch_size: int = 64) -> list[str]:
    model.eval()
    texts = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out = model.generate(pixel_values=images[start:start + batch_size], max_new_tokens=max_new_tokens,
                                 num_beams=1, do_sample=False)
            texts += tokenizer.decode_batch(row[1:].tolist() for row in out)  # drop the start token
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="edh's training budget in seconds")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny data, seconds of training")
    parser.add_argument("--out", default="runs/bench/captioning")
    args = parser.parse_args()
    overrides = {"data.num_train": 256, "data.num_test": 64, "train.epochs": 1} if args.quick else {}
    spec = load_config("captioner-scenes.yaml", overrides)
    result: dict = {"environment": environment()}

    run, times = timed_train(spec, Path(args.out) / "edh", max_time={"seconds": max(30, args.budget - 30)})
    evaluation = evaluate_run(run, "test", None, progress=False)
    edh_scores = evaluation.metrics["tokens"]
    result["edh"] = {**times, **{k: round(v, 4) for k, v in edh_scores.items()}}
    print(f"edh: trained in {times['seconds']} s (other processes: {times['others_cores']} cores): "
          + "  ".join(f"{k}={v:.4f}" for k, v in edh_scores.items()))

    translator = Translator(run)
    from edh.data.base import build_data

    data = spec.data.options()
    data["tokenizer_file"] = str(Path(run.path) / "tokenizer.json")
    bundle = build_data(spec.data.name, data, spec.data.seed)
    test_images = torch.stack([bundle.test[i][0] for i in range(len(bundle.test))])
    references = bundle.test.references
    max_new = int(run.info.extra["max_tokens"]) + 2
    edh_params = sum(p.numel() for p in run.model.parameters())

    if not args.skip_hf:
        vocab = translator.tokenizer.vocab_size
        model = hf_model(vocab, translator.tokenizer, tuple(run.info.image_size), hidden=384, layers=6)
        hf_params = sum(p.numel() for p in model.parameters())
        steps_hint = int(spec.train.epochs * math.ceil(len(bundle.train) / spec.data.batch_size))
        busy, cpu = machine_busy_seconds(), own_cpu_seconds(children=True)
        trained = hf_train(model, bundle, times["seconds"], spec.data.batch_size, spec.train.lr, steps_hint)
        others = max(0.0, (machine_busy_seconds() - busy) - (own_cpu_seconds(children=True) - cpu)) / trained["seconds"]
        hypotheses = hf_captions(model, test_images, translator.tokenizer, max_new)
        hf_scores = translation_scores(hypotheses, references)
        result["hf"] = {**trained, "others_cores": round(others, 2), "params": hf_params,
                        **{k: round(v, 4) for k, v in hf_scores.items()}}
        print(f"HF VisionEncoderDecoder (ViT + BERT, {hf_params / 1e6:.1f}M params vs edh {edh_params / 1e6:.1f}M): "
              f"{trained['steps']} steps in {trained['seconds']} s (other processes: {others:.2f} cores): "
              + "  ".join(f"{k}={v:.4f}" for k, v in hf_scores.items()))
        print(f"exact match edh {edh_scores['exact_match']:.4f} vs HF {hf_scores['exact_match']:.4f}: "
              f"{'met' if edh_scores['exact_match'] >= hf_scores['exact_match'] else 'MISSED'} (target edh >= HF)")

        batch = test_images[:64]
        contenders = [
            Contender("edh generate (greedy)", lambda: translator.generate_ids(batch, max_new_tokens=max_new), len(batch)),
            Contender("HF generate (greedy)", lambda: hf_captions(model, batch, translator.tokenizer, max_new),
                      len(batch)),
        ]
        rows = summarize(contenders, measure(contenders, repeats=3 if args.quick else 7, max_wait=120))
        speed = {row["name"]: row for row in rows}
        ratio = speed["edh generate (greedy)"]["items_per_s"] / speed["HF generate (greedy)"]["items_per_s"]
        result["throughput"] = rows
        result["throughput_ratio"] = round(ratio, 3)
        for row in rows:
            print(f"{row['name']:<24} {row['items_per_s']:8.1f} images/s  (quiet samples {row['quiet_samples']}, "
                  f"noisy={row['noisy']})")
        print(f"greedy captioning throughput edh / HF: {ratio:.2f}x ({'met' if ratio >= 2 else 'MISSED'}: target >= 2x)")
    print(f"wrote {write_json('captioning', result)}")


if __name__ == "__main__":
    main()
