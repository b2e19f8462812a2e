"""edh U-Net(resnet34) against segmentation_models_pytorch's Unet(resnet34): images/s on CPU, one process.

Run: ``python bench/segmentation.py [--repeats N] [--quick] [--threads T]``.

Both models: a ResNet-34 encoder (random weights), decoder channels 256, 128, 64, 32, 16 (smp's
default, given to edh explicitly), BatchNorm in the decoder, 2 classes. The heads differ as the
libraries define them: smp's ``SegmentationHead`` is a 3x3 conv, edh's segmentation head the 1x1
conv of the U-Net paper; both parameter counts are printed.

Forward: batch 4, 256x256, eval, ``torch.inference_mode()``. smp runs with its defaults
(contiguous) and in channels_last; edh runs as built, then through `edh.utils.perf.prepare_for_inference`
(channels_last + BatchNorm folded), then with bf16 autocast on top. Channels_last contenders get
the same contiguous batch and convert it inside the timed step.
Train step: batch 4, 256x256, SGD (momentum 0.9) + cross-entropy, train mode, each model
contiguous and channels_last (edh's ``train.channels_last: true``).
Contenders of a group are timed round-robin (`common.measure`); medians of quiet samples are
reported; results also go to ``bench/results/segmentation.json``.
"""

from __future__ import annotations

import gc
from typing import Any

import segmentation_models_pytorch as smp
import torch
from common import (Contender, apply_threads, base_parser, environment, format_ratio, forward_step, measure,
                    noisy_warning, print_table, ratio, seed_everything, sgd_train_step, summarize, write_json)

import edh
from edh.utils.perf import prepare_for_inference, to_channels_last

NUM_CLASSES = 2
BATCH, SIZE = 4, 256
DECODER_CHANNELS = [256, 128, 64, 32, 16]
COLUMNS = ["name", "items_per_s", "ms_per_step", "best_items_per_s", "quiet_samples"]


def build(kind: str) -> torch.nn.Module:
    """A fresh, seeded U-Net(resnet34): ``kind`` is ``edh`` or ``smp``."""
    seed_everything(0)
    if kind == "edh":
        return edh.build({"encoder": {"name": "resnet34"},
                          "decoder": {"name": "unet", "decoder_channels": DECODER_CHANNELS},
                          "heads": {"mask": {"type": "segmentation", "source": "decoder", "num_classes": NUM_CLASSES}}})
    return smp.Unet("resnet34", encoder_weights=None, decoder_channels=DECODER_CHANNELS, classes=NUM_CLASSES)


def logits(kind: str, outputs: Any) -> torch.Tensor:
    return outputs["mask"] if kind == "edh" else outputs


def forward_contenders(images: torch.Tensor) -> list[Contender]:
    smp_model, edh_model = build("smp").eval(), build("edh").eval()
    smp_cl = build("smp").eval().to(memory_format=torch.channels_last)
    edh_fast = prepare_for_inference(edh_model)
    with torch.inference_mode():  # the speed options keep the outputs
        reference = edh_model(images)["mask"]
        error = (edh_fast(to_channels_last(images))["mask"] - reference).abs().max().item()
    assert error < 1e-3, f"prepared edh U-Net differs from eager by {error}"
    print(f"prepared vs eager edh U-Net: max |diff| {error:.2e}", flush=True)
    n = images.shape[0]
    return [
        Contender("smp (default)", forward_step(smp_model, images), n, {"memory_format": "contiguous"}),
        Contender("smp channels_last", forward_step(smp_cl, images, True), n, {"memory_format": "channels_last"}),
        Contender("edh eager (as built)", forward_step(edh_model, images), n, {"memory_format": "contiguous"}),
        Contender("edh prepared (CL + BN folded)", forward_step(edh_fast, images, True), n,
                  {"memory_format": "channels_last", "bn_folded": True}),
        Contender("edh prepared + bf16 autocast", forward_step(edh_fast, images, True, bf16=True), n,
                  {"memory_format": "channels_last", "bn_folded": True, "dtype": "bf16 autocast"}),
    ]


def train_contenders(images: torch.Tensor, masks: torch.Tensor) -> list[Contender]:
    contenders = []
    for kind in ("edh", "smp"):
        for channels_last in (False, True):
            name = f"{kind} {'channels_last' if channels_last else 'contiguous'}"
            contenders.append(Contender(name, sgd_train_step(kind, build(kind), images, masks, "mask", channels_last),
                                        images.shape[0], {"kind": kind}))
    return contenders


def ratios(forward_rows: list[dict[str, Any]], train_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's target ratios, from medians (``value``) and from best samples (``best``)."""
    def values(key: str) -> list[tuple[str, float, float | None]]:
        forward = {r["name"]: r[key] for r in forward_rows}
        train = {r["name"]: r[key] for r in train_rows}
        fast = forward["edh prepared (CL + BN folded)"]
        return [
            ("edh prepared / smp default, forward", fast / forward["smp (default)"], 1.2),
            ("edh prepared / smp channels_last, forward", fast / forward["smp channels_last"], 1.0),
            ("edh channels_last / smp default, train step", train["edh channels_last"] / train["smp contiguous"], 1.2),
            ("edh channels_last / smp channels_last, train step",
             train["edh channels_last"] / train["smp channels_last"], 1.0),
            ("edh contiguous / smp contiguous, train step (same memory format)",
             train["edh contiguous"] / train["smp contiguous"], None),
            ("edh eager / smp default, forward (same memory format)",
             forward["edh eager (as built)"] / forward["smp (default)"], None),
            ("edh bf16 autocast / edh prepared fp32, forward", forward["edh prepared + bf16 autocast"] / fast, None),
        ]

    out = [ratio(name, value, target) for name, value, target in values("items_per_s")]
    for r, (_, best, _) in zip(out, values("best_items_per_s")):
        r["best"] = best
    return out


def parameter_counts() -> dict[str, int]:
    counts = {}
    for kind in ("edh", "smp"):
        model = build(kind)
        counts[kind] = sum(p.numel() for p in model.parameters())
    return counts


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    repeats, forward_calls, train_calls = (2, 1, 1) if args.quick else (args.repeats, 2, 1)
    env = environment()
    print(f"torch {env['torch']}, smp {smp.__version__}, {threads} threads, {env['cpu']}; "
          f"{repeats} round-robin repeats, medians", flush=True)
    counts = parameter_counts()
    print(f"parameters: edh U-Net(resnet34) {counts['edh']:,}; smp Unet(resnet34) {counts['smp']:,} "
          f"(difference {counts['smp'] - counts['edh']:,}: smp's 3x3 head conv vs edh's 1x1)", flush=True)
    seed_everything(0)
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    masks = torch.randint(0, NUM_CLASSES, (BATCH, SIZE, SIZE))
    contenders = forward_contenders(images)
    forward_rows = summarize(contenders, measure(contenders, repeats, forward_calls, warmup=2, max_wait=args.max_wait))
    print_table(forward_rows, COLUMNS, f"\nforward, batch {BATCH}, {SIZE}x{SIZE} (items = images)")
    if noisy_warning(forward_rows):
        print(noisy_warning(forward_rows))
    del contenders
    gc.collect()
    contenders = train_contenders(images, masks)
    train_rows = summarize(contenders, measure(contenders, repeats, train_calls, warmup=2, max_wait=args.max_wait))
    print_table(train_rows, COLUMNS, f"\ntrain step, batch {BATCH}, {SIZE}x{SIZE} (items = images)")
    if noisy_warning(train_rows):
        print(noisy_warning(train_rows))
    del contenders
    gc.collect()
    found = ratios(forward_rows, train_rows)
    print("\nratios (medians; best-sample ratios beside)")
    print("\n".join(format_ratio(r) for r in found), flush=True)
    report = {"environment": env, "smp": smp.__version__, "repeats": repeats, "parameters": counts,
              "settings": {"forward": f"batch {BATCH}, {SIZE}x{SIZE}, eval, inference_mode, {forward_calls} calls "
                                      "per sample", "train": f"batch {BATCH}, {SIZE}x{SIZE}, SGD momentum 0.9, CE"},
              "forward": forward_rows, "train": train_rows, "ratios": found}
    print(f"\nwrote {write_json('segmentation', report)}")


if __name__ == "__main__":
    main()
