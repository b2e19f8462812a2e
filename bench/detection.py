"""edh detectors against torchvision on CPU: Faster R-CNN R50-FPN (eval + train step) and one-stage detectors.

Run: ``python bench/detection.py [--repeats N] [--quick] [--threads T] [--size 512] [--bf16-rows auto|on|off]``
(bf16 rows by default only where the CPU has bfloat16 instructions).

Faster R-CNN: edh ``resnet50 -> fpn -> faster_rcnn`` against torchvision's
``fasterrcnn_resnet50_fpn`` built with ``min_size = max_size = 512`` (so it does not resize), both
seeded before building; edh then loads torchvision's weights (`edh.compat.torchvision_detection`),
so both find the same boxes and do the same post-processing work. Inputs: 2 images of 512x512 in
[0, 1]; torchvision normalises them inside its model, edh's timed step normalises them too.
- eval: one forward of the 2 images including post-processing (NMS), ``torch.inference_mode``; edh
  as built, and through `edh.utils.perf.prepare_for_inference` (channels_last + BatchNorm folded).
  bf16: torchvision under its own bf16 autocast against edh ``--bf16`` (`edh.utils.perf.InferenceModel`
  with ``bf16=True``: bf16 weights, channels_last, BatchNorm folded, autocast); target edh ``--bf16``
  >= 1.3x torchvision bf16. Before timing, torchvision's bf16 R50-FPN features must be within
  ``BF16_FEATURE_TOLERANCE`` of its fp32 ones (``|diff| / |fp32|`` per level; about 0.01 seen). The share
  of torchvision's fp32 boxes each bf16 run still finds is printed, not asserted: with random weights
  the 100 kept detections per image are near-ties in score, which bf16's rounding reorders.
- train step: forward with 3 boxes per image, the four losses, backward, SGD step (lr 0.01 momentum
  0.9, the default torchvision trainer); BatchNorm trains in both (torchvision uses plain BatchNorm
  when built without weights). edh contiguous, channels_last, and (a separate row, not the fp32
  comparison) with bf16 autocast, what ``trainer: {precision: bf16-mixed}`` gives ``edh train``.

One-stage: images/s of eval forwards at the same input: edh ``fcos`` head on R50-FPN P3-P7 with
torchvision FCOS's head settings (4 GroupNorm convs per tower), torchvision ``fcos_resnet50_fpn`` and
``fasterrcnn_mobilenet_v3_large_fpn``.

All contenders of a group run round-robin (`common.measure`), medians reported; results also go
to ``bench/results/detection.json``.
"""

from __future__ import annotations

import gc
from typing import Any, Callable

import torch
import torchvision
from common import (Contender, add_bf16_rows_option, apply_threads, base_parser, bf16_rows, bf16_target, environment,
                    format_ratio, matmul_peak_gflops, measure, print_table, ratio, seed_everything, summarize,
                    write_json)

import edh
from edh.compat.torchvision_detection import fasterrcnn_resnet50_fpn_spec, load_fasterrcnn_weights
from edh.layers.conv_grad import to_channels_last_for_training
from edh.utils.perf import InferenceModel, autocast, prepare_for_inference, to_channels_last

BATCH = 2
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
COLUMNS = ["name", "items_per_s", "ms_per_step", "min_items_per_s", "max_items_per_s"]
HEAD = "detections"
BF16_FEATURE_TOLERANCE = 0.05
TV_BF16, EDH_BF16 = "torchvision fasterrcnn_resnet50_fpn bf16 autocast", "edh faster_rcnn --bf16 (InferenceModel)"


def torchvision_detector(name: str, size: int) -> torch.nn.Module:
    seed_everything(0)
    builder = getattr(torchvision.models.detection, name)
    return builder(weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size)


def edh_fasterrcnn(reference: torch.nn.Module) -> torch.nn.Module:
    seed_everything(0)
    model = edh.build(fasterrcnn_resnet50_fpn_spec(91), pretrained=False)
    return load_fasterrcnn_weights(model, reference.state_dict())


def edh_fcos() -> torch.nn.Module:
    """R50-FPN P3-P7 + fcos head with torchvision FCOS's settings (GroupNorm, 4 convs, thresholds)."""
    seed_everything(0)
    return edh.build({"encoder": {"name": "resnet50"},
                      "decoder": {"name": "fpn", "out_channels": 256, "levels": [2, 3, 4], "extra": "p6p7"},
                      "heads": {HEAD: {"type": "fcos", "source": "decoder", "num_classes": 90, "num_convs": 4,
                                       "norm": "group", "score_thresh": 0.2, "nms_thresh": 0.6}}})


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


def torchvision_eval(model: torch.nn.Module, images: torch.Tensor, bf16: bool = False) -> Callable[[], Any]:
    model.eval()

    def step() -> Any:
        with torch.inference_mode(), autocast("cpu", enabled=bf16):
            return model(list(images))

    return step


def edh_eval(model: torch.nn.Module, images: torch.Tensor, channels_last: bool = False,
             bf16: bool = False) -> Callable[[], Any]:
    model.eval()
    head = model.heads[HEAD]

    def step() -> Any:
        with torch.inference_mode(), autocast("cpu", enabled=bf16):
            x = normalise(images)
            outputs = model(to_channels_last(x) if channels_last else x)
            return head.predict(outputs[HEAD])

    return step


def targets_for(size: int) -> dict[str, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    boxes, labels = [], []
    for _ in range(BATCH):
        corner = torch.rand(3, 2, generator=generator) * (size - 256)
        extent = 32 + torch.rand(3, 2, generator=generator) * 224
        boxes.append(torch.cat([corner, corner + extent], dim=1))
        labels.append(torch.randint(1, 91, (3,), generator=generator))
    return {"boxes": boxes, "labels": labels}


def torchvision_train(model: torch.nn.Module, images: torch.Tensor, targets: dict[str, Any]) -> Callable[[], float]:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per_image = [{"boxes": b, "labels": l} for b, l in zip(targets["boxes"], targets["labels"])]

    def step() -> float:
        loss = sum(model(list(images), per_image).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def edh_train(model: torch.nn.Module, images: torch.Tensor, targets: dict[str, Any],
              channels_last: bool = False, bf16: bool = False) -> Callable[[], float]:
    model.train()
    if channels_last:  # as `edh train` runs it with ``channels_last: true``
        model = to_channels_last_for_training(model)
    head = model.heads[HEAD]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        x = normalise(images)
        with autocast("cpu", enabled=bf16):  # what `trainer: {precision: bf16-mixed}` does in edh train
            outputs = model(to_channels_last(x) if channels_last else x, targets=targets)
            loss = sum(head.loss(outputs[HEAD], head.select_targets(targets, HEAD)).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def check_same_detections(reference: list[dict], found: list[dict], label: str) -> dict[str, Any]:
    """How close edh's detections are to torchvision's (same weights, same images): identical lists
    (labels and order, max box difference), and the share of torchvision's boxes that edh also finds
    (same label, IoU >= 0.99; folding BatchNorm changes float rounding, which can swap near-ties)."""
    counts = [(len(r["boxes"]), len(f["boxes"])) for r, f in zip(reference, found)]
    same = all(a == b for a, b in counts) and all(torch.equal(r["labels"], f["labels"])
                                                  for r, f in zip(reference, found))
    diff = max(((r["boxes"] - f["boxes"]).abs().max().item() for r, f in zip(reference, found)
                if len(r["boxes"]) and len(r["boxes"]) == len(f["boxes"])), default=0.0) if same else None
    matched = total = 0
    for r, f in zip(reference, found):
        total += len(r["boxes"])
        if len(r["boxes"]) and len(f["boxes"]):
            overlap = torchvision.ops.box_iou(r["boxes"], f["boxes"]) * (r["labels"][:, None] == f["labels"][None])
            matched += int((overlap.amax(dim=1) >= 0.99).sum())
    share = matched / max(1, total)
    print(f"{label}: detections per image {counts}; identical lists: {same}"
          + (f" (max |box diff| {diff:.1e})" if same else "")
          + f"; torchvision boxes also found (same label, IoU >= 0.99): {share:.1%}", flush=True)
    return {"counts": counts, "identical": same, "max_box_diff": diff, "found_share": share}


def fasterrcnn_groups(size: int, repeats: int, calls: int, bf16: bool = True
                      ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seed_everything(0)
    images = torch.rand(BATCH, 3, size, size)
    reference = torchvision_detector("fasterrcnn_resnet50_fpn", size)
    ours = edh_fasterrcnn(reference)
    prepared = prepare_for_inference(ours)
    steps = {"torchvision": torchvision_eval(reference, images), "edh eager": edh_eval(ours, images),
             "edh prepared": edh_eval(prepared, images, channels_last=True)}
    if bf16:
        steps.update({"torchvision bf16": torchvision_eval(reference, images, bf16=True),
                      "edh --bf16": edh_eval(InferenceModel(ours, bf16=True), images)})
    results = {name: step() for name, step in steps.items()}
    checks = {name: check_same_detections(results["torchvision"], results[name], f"{name} vs torchvision")
              for name in steps if name != "torchvision"}
    contenders = [
        Contender("torchvision fasterrcnn_resnet50_fpn", steps["torchvision"], BATCH, {"kind": "torchvision"}),
        Contender("edh faster_rcnn eager (as built)", steps["edh eager"], BATCH, {"kind": "edh"}),
        Contender("edh faster_rcnn prepared (CL + BN folded)", steps["edh prepared"], BATCH, {"kind": "edh"}),
    ]
    drift = bf16_drift(reference, images) if bf16 else {}
    if bf16:
        contenders += [
            Contender("edh faster_rcnn prepared + bf16 autocast", edh_eval(prepared, images, True, bf16=True), BATCH,
                      {"kind": "edh", "dtype": "bf16 autocast"}),
            Contender(TV_BF16, steps["torchvision bf16"], BATCH, {"kind": "torchvision", "dtype": "bf16 autocast"}),
            Contender(EDH_BF16, steps["edh --bf16"], BATCH, {"kind": "edh", "dtype": "bf16 autocast, bf16 weights"}),
        ]
    eval_rows = summarize(contenders, measure(contenders, repeats, calls, warmup=1))
    print_table(eval_rows, COLUMNS, f"\nFaster R-CNN R50-FPN eval forward + post-processing, batch {BATCH}, "
                                    f"{size}x{size} (items = images)")
    del contenders, steps, prepared, ours, reference
    gc.collect()
    targets = targets_for(size)
    contenders = [
        Contender("torchvision fasterrcnn_resnet50_fpn",
                  torchvision_train(torchvision_detector("fasterrcnn_resnet50_fpn", size), images, targets), BATCH,
                  {"kind": "torchvision"}),
        Contender("edh faster_rcnn contiguous",
                  edh_train(edh_fasterrcnn(torchvision_detector("fasterrcnn_resnet50_fpn", size)), images, targets),
                  BATCH, {"kind": "edh"}),
        Contender("edh faster_rcnn channels_last",
                  edh_train(edh_fasterrcnn(torchvision_detector("fasterrcnn_resnet50_fpn", size)), images, targets,
                            channels_last=True), BATCH, {"kind": "edh"}),
    ]
    if bf16:
        contenders.append(Contender(
            "edh faster_rcnn bf16 autocast",
            edh_train(edh_fasterrcnn(torchvision_detector("fasterrcnn_resnet50_fpn", size)), images, targets,
                      bf16=True), BATCH, {"kind": "edh bf16", "dtype": "bf16 autocast"}))
    train_rows = summarize(contenders, measure(contenders, repeats, 1, warmup=1))
    print_table(train_rows, COLUMNS, f"\nFaster R-CNN R50-FPN train step (forward, 4 losses, backward, SGD), batch "
                                     f"{BATCH}, {size}x{size} (items = images)")
    del contenders
    gc.collect()
    return ({"eval": eval_rows, "train": train_rows, "detection_checks": checks, "bf16_feature_drift": drift},
            fasterrcnn_ratios(eval_rows, train_rows))


def bf16_drift(reference: Any, images: torch.Tensor) -> dict[str, float]:
    """torchvision's bf16 autocast R50-FPN features against its fp32 ones (``|diff| / |fp32|`` per level),
    asserted within ``BF16_FEATURE_TOLERANCE``."""
    with torch.inference_mode():
        features = reference.backbone(normalise(images))
        with autocast("cpu"):
            bf16_features = reference.backbone(normalise(images))
    drift = {level: ((bf16_features[level].float() - fp32).norm() / fp32.norm()).item()
             for level, fp32 in features.items()}
    print("torchvision bf16 autocast R50-FPN features, |diff| / |fp32| per level: "
          + ", ".join(f"{level} {value:.3f}" for level, value in drift.items()), flush=True)
    assert max(drift.values()) <= BF16_FEATURE_TOLERANCE, (
        f"torchvision's bf16 autocast R50-FPN features differ from fp32 by {drift} (|diff| / |fp32|, allowed "
        f"{BF16_FEATURE_TOLERANCE}): the bf16 path computes something else")
    return drift


def fasterrcnn_ratios(eval_rows: list[dict], train_rows: list[dict]) -> list[dict[str, Any]]:
    rate = {r["name"]: r["items_per_s"] for r in eval_rows}
    ms = {r["name"]: r["ms_per_step"] for r in eval_rows}
    train = {r["name"]: r["ms_per_step"] for r in train_rows}
    tv, fast = "torchvision fasterrcnn_resnet50_fpn", "edh faster_rcnn prepared (CL + BN folded)"
    best_train_name = min((n for n in train if n.startswith("edh") and "bf16" not in n), key=train.get)
    together = (ms[tv] + train[tv]) / (ms[fast] + train[best_train_name])
    ratios = [
        ratio("edh prepared / torchvision, eval forward (2 images)", rate[fast] / rate[tv], 1.2),
        ratio(f"edh ({best_train_name.removeprefix('edh faster_rcnn ')}) / torchvision, train step",
              train[tv] / train[best_train_name], 1.2),
        ratio("edh / torchvision, eval forward + train step together", together, 1.2),
        ratio("edh eager (as built) / torchvision, eval forward", rate["edh faster_rcnn eager (as built)"] / rate[tv]),
    ]
    if EDH_BF16 in rate:
        ratios += [
            ratio("edh prepared + bf16 / torchvision, eval forward",
                  rate["edh faster_rcnn prepared + bf16 autocast"] / rate[tv]),
            ratio("edh --bf16 / torchvision bf16 autocast, eval forward", rate[EDH_BF16] / rate[TV_BF16],
                  bf16_target(1.3)),
            ratio("edh bf16 autocast / torchvision fp32, train step", train[tv] / train["edh faster_rcnn bf16 autocast"]),
        ]
    return ratios


def one_stage_group(size: int, repeats: int, calls: int) -> list[dict[str, Any]]:
    seed_everything(0)
    images = torch.rand(BATCH, 3, size, size)
    fcos = edh_fcos()
    contenders = [
        Contender("edh fcos R50-FPN eager", edh_eval(fcos, images), BATCH, {"kind": "edh"}),
        Contender("edh fcos R50-FPN prepared", edh_eval(prepare_for_inference(fcos), images, True), BATCH,
                  {"kind": "edh"}),
        Contender("torchvision fcos_resnet50_fpn",
                  torchvision_eval(torchvision_detector("fcos_resnet50_fpn", size), images), BATCH,
                  {"kind": "torchvision"}),
        Contender("torchvision fasterrcnn_mobilenet_v3_large_fpn",
                  torchvision_eval(torchvision_detector("fasterrcnn_mobilenet_v3_large_fpn", size), images), BATCH,
                  {"kind": "torchvision"}),
    ]
    rows = summarize(contenders, measure(contenders, repeats, calls, warmup=1))
    print_table(rows, COLUMNS, f"\nOne-stage and light detectors, eval forward + post-processing, batch {BATCH}, "
                               f"{size}x{size} (items = images)")
    return rows


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--size", type=int, default=512, help="square input side (default 512)")
    add_bf16_rows_option(parser)  # emulated, each R50-FPN bf16 sample takes minutes
    args = parser.parse_args()
    bf16 = bf16_rows(args.bf16_rows)
    threads = apply_threads(args.threads)
    repeats, calls = (2, 1) if args.quick else (args.repeats, 1)
    env = environment()
    env["matmul_peak_gflops"] = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    print(f"torch {env['torch']}, torchvision {torchvision.__version__}, {threads} threads, {env['cpu']}; "
          f"{repeats} round-robin repeats, medians" + ("" if bf16 else "; no bf16 rows (--bf16-rows)"), flush=True)
    fasterrcnn, ratios = fasterrcnn_groups(args.size, repeats, calls, bf16)
    print("\nFaster R-CNN ratios (medians)")
    print("\n".join(format_ratio(r) for r in ratios), flush=True)
    gc.collect()
    one_stage = one_stage_group(args.size, repeats, calls)
    report = {"environment": env, "repeats": repeats, "size": args.size, "batch": BATCH,
              "faster_rcnn": fasterrcnn, "ratios": ratios, "one_stage": one_stage}
    print(f"\nwrote {write_json('detection', report)}")


if __name__ == "__main__":
    main()
