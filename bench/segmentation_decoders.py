"""Which decoder to pick: every segmentation decoder trained on `scenes` for the same time budget.

    python bench/segmentation_decoders.py [--only unet deeplabv3 ...] [--budget 300] [--out runs/bench]

Each decoder gets the U-Net's config (`configs/unet-scenes.yaml`: a ResNet-18 encoder, 64x64 scenes,
11 classes, ce+dice, AdamW with a cosine schedule) with only the decoder swapped (its smp defaults;
the U-Net keeps the config's decoder). DeepLabV3 / DeepLabV3+ / PAN dilate the encoder as smp does
(``encoder.output_stride`` 8 / 16 / 16); DPT needs a ViT, so it gets a ViT-Ti with 8x8 patches
(random weights, as every encoder here).

The budget is met by the schedule, not by cutting training short: a probe times 12 train steps of
the model (after 3 of warm-up), and the run gets as many epochs as fit in ``--budget`` seconds
(at least 1), so the cosine schedule ends where the budget does. The table gives the time really
taken beside the validation mIoU (background included), with the CPU time over 2 cores and the
cores other processes used meanwhile (a busy machine shows there). Results:
``bench/results/segmentation_decoders.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from training import accuracy_parser, epochs_done, parse_and_apply, timed_train, write_rows

from edh.data.scenes import collate_scenes
from edh.workflows.demo import load_config
from edh.workflows.evaluate import evaluate_run

CONFIG = "unet-scenes.yaml"
VIT = {"name": "timm:vit_tiny_patch16_224", "out_indices": [2, 5, 8, 11], "options": {"img_size": 64, "patch_size": 8}}
DECODERS = {  # name: (encoder overrides, decoder spec); None: the config's own
    "unet": (None, None),
    "unetplusplus": (None, {"name": "unetplusplus"}),
    "fpn": (None, {"name": "fpn"}),
    "linknet": (None, {"name": "linknet"}),
    "manet": (None, {"name": "manet"}),
    "pan": ({"output_stride": 16}, {"name": "pan"}),
    "pspnet": ({"depth": 3}, {"name": "pspnet"}),  # smp's encoder_depth 3: the stride-8 level
    "deeplabv3": ({"output_stride": 8}, {"name": "deeplabv3"}),
    "deeplabv3plus": ({"output_stride": 16}, {"name": "deeplabv3plus"}),
    "upernet": (None, {"name": "upernet"}),
    "segformer": (None, {"name": "segformer"}),
    "dpt": (VIT, {"name": "dpt"}),
}


def spec_for(name: str, epochs: int | None = None):
    encoder, decoder = DECODERS[name]
    overrides = {} if decoder is None else {"model.decoder": dict(decoder)}
    if encoder is not None and "name" in encoder:
        overrides["model.encoder"] = dict(encoder)
    elif encoder is not None:
        overrides.update({f"model.encoder.{key}": value for key, value in encoder.items()})
    if epochs is not None:
        overrides["train.epochs"] = epochs
    return load_config(CONFIG, overrides)


def probe_step_seconds(spec, steps: int = 12, warmup: int = 3) -> float:
    """Seconds per train step (forward, loss, backward, AdamW) of ``spec``'s model on its data's batches."""
    from edh.core.model import Model
    from edh.data.base import build_data
    from edh.train.batch import unpack_batch
    from edh.train.resolve import resolve_spec
    from edh.train.task import combine_losses

    bundle = build_data(spec.data.name, spec.data.options(), spec.data.seed)
    spec = resolve_spec(spec, bundle.info)
    model = Model(spec.model).bind_data(bundle.info)
    if spec.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=spec.data.batch_size, shuffle=True,
                                         collate_fn=bundle.collate_fn or collate_scenes)
    batches = iter(loader)
    times = []
    for index in range(warmup + steps):
        inputs, targets, context = unpack_batch(next(batches))
        start = time.perf_counter()
        loss, _ = combine_losses(model, model(inputs, **context), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run_case(name: str, budget: float, out: Path) -> dict:
    spec = spec_for(name)
    step = probe_step_seconds(spec)
    steps_per_epoch = math.ceil(spec.data.options()["num_train"] / spec.data.batch_size)
    epochs = max(1, int(budget / (step * steps_per_epoch * 1.1)))  # 10 %: validation and loading
    run, times = timed_train(spec_for(name, epochs), out / f"decoder-{name}")
    val = evaluate_run(run, "val", progress=False).metrics["mask"]
    parameters = sum(p.numel() for p in run.model.parameters())
    return {"case": name, "decoder": dict(run.spec.model.decoder), "encoder": dict(run.spec.model.encoder),
            "parameters": parameters, "probe_step_s": round(step, 4), "epochs": epochs_done(out / f"decoder-{name}"),
            "val_miou": round(val["miou"], 4), "val_pixel_acc": round(val["pixel_acc"], 4), **times,
            "budget_s": budget, "threads": torch.get_num_threads()}


def main() -> None:
    parser = accuracy_parser(__doc__.splitlines()[0], list(DECODERS), list(DECODERS))
    parser.add_argument("--budget", type=float, default=300.0, help="seconds of training per decoder")
    args = parse_and_apply(parser)
    rows = []
    for name in args.only:
        rows.append(run_case(name, args.budget, Path(args.out)))
        r = rows[-1]
        print(f"{name}: val mIoU {r['val_miou']:.4f} after {r['epochs']} epochs in {r['seconds']:.0f} s "
              f"(others {r['others_cores']:.2f} cores)", flush=True)
    print(f"\n{'decoder':<14} {'params':>10} {'epochs':>6} {'val mIoU':>8} {'wall s':>7} {'cpu/2 s':>7} {'others':>6}")
    for r in sorted(rows, key=lambda r: -r["val_miou"]):
        print(f"{r['case']:<14} {r['parameters']:>10,} {r['epochs']:>6} {r['val_miou']:>8.4f} {r['seconds']:>7.1f} "
              f"{r['alone_on_2_cores_s']:>7.1f} {r['others_cores']:>6.2f}")
    print(f"(budget {args.budget:.0f} s per decoder; others: cores other processes used on average during the run)")
    write_rows("segmentation_decoders", rows)


if __name__ == "__main__":
    main()
