"""edh Mask R-CNN R50-FPN against torchvision's ``maskrcnn_resnet50_fpn`` on CPU: eval forward and train step.

Run: ``python bench/mask_rcnn.py [--repeats N] [--quick] [--threads T] [--size 512] [--bf16-rows auto|on|off]``
(bf16 rows by default only where the CPU has bfloat16 instructions).

As ``bench/detection.py`` does for Faster R-CNN: torchvision built with ``weights=None,
weights_backbone=None`` and ``min_size = max_size = size`` (so it does not resize), seeded before
building; edh's ``resnet50 -> fpn -> mask_rcnn`` loads its weights
(`edh.compat.torchvision_detection.load_maskrcnn_weights`), so both find the same boxes and masks and
do the same post-processing work. Inputs: 2 images of ``size x size`` in [0, 1]; torchvision
normalises them inside its model, edh's timed step normalises them too.

- eval: one forward of the 2 images including post-processing (NMS, the mask branch on the
  detections, masks pasted into the image), ``torch.inference_mode``; edh as built, and through
  `edh.utils.perf.prepare_for_inference` (channels_last + BatchNorm folded), and that with bf16 autocast.
- train step: forward with 3 boxes (and their instance masks) per image, the five losses, backward,
  SGD step (lr 0.01, momentum 0.9); edh contiguous, channels_last as ``edh train`` runs it (each conv's
  weight gradient in the memory format measured faster here: `edh.layers.conv_grad`), the same with
  every weight gradient in channels_last (``$EDH_CONV_WEIGHT_GRAD``, the A/B), and bf16 autocast.

Before timing, edh's detections and masks are checked against torchvision's (identical lists, box
difference, share of mask pixels that agree after the 0.5 threshold). Contenders run round-robin
(`common.measure`), medians reported; results also go to ``bench/results/mask_rcnn.json``.
"""

from __future__ import annotations

import gc
from typing import Any, Callable

import torch
import torchvision
from common import (Contender, add_bf16_rows_option, apply_threads, base_parser, bf16_rows, environment, format_ratio,
                    measure, print_table, ratio, seed_everything, summarize, with_environment, write_json)
from detection import (BATCH, COLUMNS, check_same_detections, edh_eval, edh_train, targets_for, torchvision_detector,
                       torchvision_eval)

import edh
from edh.compat.torchvision_detection import load_maskrcnn_weights, maskrcnn_resnet50_fpn_spec
from edh.utils.perf import prepare_for_inference

TORCHVISION = "maskrcnn_resnet50_fpn"
PINNED = "edh mask_rcnn channels_last, every weight grad in channels_last"


def edh_maskrcnn(reference: torch.nn.Module) -> torch.nn.Module:
    seed_everything(0)
    model = edh.build(maskrcnn_resnet50_fpn_spec(91), pretrained=False)
    return load_maskrcnn_weights(model, reference.state_dict())


def mask_targets_for(size: int) -> dict[str, list[torch.Tensor]]:
    """`detection.targets_for`'s boxes with an instance mask each: the ellipse inscribed in the box."""
    targets = targets_for(size)
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    masks = []
    for boxes in targets["boxes"]:
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
        inside = ((x - centre[:, 0, None, None]) / half[:, 0, None, None]) ** 2 \
            + ((y - centre[:, 1, None, None]) / half[:, 1, None, None]) ** 2 <= 1
        masks.append(inside.to(torch.uint8))
    return {**targets, "masks": masks}


def torchvision_train(model: torch.nn.Module, images: torch.Tensor, targets: dict[str, Any]) -> Callable[[], float]:
    """`detection.torchvision_train` with the instance masks in torchvision's per-image targets."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per_image = [{"boxes": b, "labels": l, "masks": m}
                 for b, l, m in zip(targets["boxes"], targets["labels"], targets["masks"])]

    def step() -> float:
        loss = sum(model(list(images), per_image).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def check_same_masks(reference: list[dict], found: list[dict], label: str) -> dict[str, Any]:
    """`check_same_detections`, then for identical lists how close the masks are: the largest probability
    difference and the share of pixels inside any detection's box whose 0.5-thresholded value agrees."""
    result = check_same_detections(reference, found, label)
    if not result["identical"]:
        return result
    diff = max(((r["masks"] - f["masks"]).abs().max().item() for r, f in zip(reference, found) if len(r["masks"])),
               default=0.0)
    agree = total = 0
    for r, f in zip(reference, found):
        near = (r["masks"] > 0) | (f["masks"] > 0)
        agree += int(((r["masks"] > 0.5) == (f["masks"] > 0.5))[near].sum())
        total += int(near.sum())
    share = agree / max(1, total)
    print(f"{label}: masks max |probability diff| {diff:.1e}; pixels agreeing after 0.5 threshold: {share:.4%}",
          flush=True)
    return {**result, "max_mask_diff": diff, "mask_agree_share": share}


def maskrcnn_groups(size: int, repeats: int, calls: int, bf16: bool = True
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seed_everything(0)
    images = torch.rand(BATCH, 3, size, size)
    reference = torchvision_detector(TORCHVISION, size)
    ours = edh_maskrcnn(reference)
    prepared = prepare_for_inference(ours)
    steps = {"torchvision": torchvision_eval(reference, images), "edh eager": edh_eval(ours, images),
             "edh prepared": edh_eval(prepared, images, channels_last=True)}
    results = {name: step() for name, step in steps.items()}
    checks = {name: check_same_masks(results["torchvision"], results[name], f"{name} vs torchvision")
              for name in ("edh eager", "edh prepared")}
    contenders = [
        Contender(f"torchvision {TORCHVISION}", steps["torchvision"], BATCH, {"kind": "torchvision"}),
        Contender("edh mask_rcnn eager (as built)", steps["edh eager"], BATCH, {"kind": "edh"}),
        Contender("edh mask_rcnn prepared (CL + BN folded)", steps["edh prepared"], BATCH, {"kind": "edh"}),
    ] + ([Contender("edh mask_rcnn prepared + bf16 autocast", edh_eval(prepared, images, True, bf16=True), BATCH,
                    {"kind": "edh", "dtype": "bf16 autocast"})] if bf16 else [])
    eval_rows = summarize(contenders, measure(contenders, repeats, calls, warmup=1))
    print_table(eval_rows, COLUMNS, f"\nMask R-CNN R50-FPN eval forward + post-processing (masks pasted), batch "
                                    f"{BATCH}, {size}x{size} (items = images)")
    del contenders, steps, prepared, ours, reference, results
    gc.collect()
    targets = mask_targets_for(size)
    contenders = [
        Contender(f"torchvision {TORCHVISION}",
                  torchvision_train(torchvision_detector(TORCHVISION, size), images, targets), BATCH,
                  {"kind": "torchvision"}),
        Contender("edh mask_rcnn contiguous",
                  edh_train(edh_maskrcnn(torchvision_detector(TORCHVISION, size)), images, targets), BATCH,
                  {"kind": "edh"}),
        Contender("edh mask_rcnn channels_last",
                  edh_train(edh_maskrcnn(torchvision_detector(TORCHVISION, size)), images, targets,
                            channels_last=True), BATCH, {"kind": "edh"}),
        Contender(PINNED, with_environment(edh_train(edh_maskrcnn(torchvision_detector(TORCHVISION, size)), images,
                                                     targets, channels_last=True), "EDH_CONV_WEIGHT_GRAD",
                                           "channels_last"), BATCH, {"kind": "edh", "pinned": True}),
    ] + ([Contender("edh mask_rcnn bf16 autocast",
                    edh_train(edh_maskrcnn(torchvision_detector(TORCHVISION, size)), images, targets, bf16=True),
                    BATCH, {"kind": "edh bf16", "dtype": "bf16 autocast"})] if bf16 else [])
    train_rows = summarize(contenders, measure(contenders, repeats, 1, warmup=1))
    print_table(train_rows, COLUMNS, f"\nMask R-CNN R50-FPN train step (forward, 5 losses, backward, SGD), batch "
                                     f"{BATCH}, {size}x{size} (items = images)")
    del contenders
    gc.collect()
    return {"eval": eval_rows, "train": train_rows, "mask_checks": checks}, maskrcnn_ratios(eval_rows, train_rows)


def maskrcnn_ratios(eval_rows: list[dict], train_rows: list[dict]) -> list[dict[str, Any]]:
    rate = {r["name"]: r["items_per_s"] for r in eval_rows}
    train = {r["name"]: r["ms_per_step"] for r in train_rows}
    tv, fast = f"torchvision {TORCHVISION}", "edh mask_rcnn prepared (CL + BN folded)"
    best_train_name = min((n for n in train if n.startswith("edh") and "bf16" not in n and n != PINNED),
                          key=train.get)
    found = [
        ratio("edh prepared / torchvision, eval forward (2 images)", rate[fast] / rate[tv], 1.3),
        ratio(f"edh ({best_train_name.removeprefix('edh mask_rcnn ')}) / torchvision, train step",
              train[tv] / train[best_train_name], 1.3),
        ratio("edh eager (as built) / torchvision, eval forward", rate["edh mask_rcnn eager (as built)"] / rate[tv]),
        ratio("measured conv weight-grad format / all in channels_last, train step",
              train[PINNED] / train["edh mask_rcnn channels_last"]),
    ]
    if "edh mask_rcnn bf16 autocast" in train:
        found += [ratio("edh prepared + bf16 / torchvision, eval forward",
                        rate["edh mask_rcnn prepared + bf16 autocast"] / rate[tv]),
                  ratio("edh bf16 autocast / torchvision fp32, train step",
                        train[tv] / train["edh mask_rcnn bf16 autocast"])]
    return found


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--size", type=int, default=512, help="square input side (default 512)")
    add_bf16_rows_option(parser)
    args = parser.parse_args()
    bf16 = bf16_rows(args.bf16_rows)
    threads = apply_threads(args.threads)
    repeats, calls = (2, 1) if args.quick else (args.repeats, 1)
    env = environment()
    print(f"torch {env['torch']}, torchvision {torchvision.__version__}, {threads} threads, {env['cpu']}; "
          f"{repeats} round-robin repeats, medians" + ("" if bf16 else "; no bf16 rows (--bf16-rows)"), flush=True)
    groups, ratios = maskrcnn_groups(args.size, repeats, calls, bf16)
    print("\nMask R-CNN ratios (medians)")
    print("\n".join(format_ratio(r) for r in ratios), flush=True)
    report = {"environment": env, "repeats": repeats, "size": args.size, "batch": BATCH, "mask_rcnn": groups,
              "ratios": ratios}
    print(f"\nwrote {write_json('mask_rcnn', report)}")


if __name__ == "__main__":
    main()
