"""Detection on large images: tiled inference at full resolution against a downscaled copy.

    python bench/detection_tiling.py [--run RUN] [--size 4096] [--tiles 64 128 256] [--overlap-pixels 40]
                                     [--downscale 512 1024] [--merge nms] [--repeats 1] [--epochs N]

A 4096x4096 image (``--size``) is a mosaic of `scenes` test images (64x64 each, 1-3 digit sprites of
16-32 px), with every sprite's box and class shifted to the mosaic: about 8,000 known objects. The
FCOS run (``--run``; default: ``runs/bench/fcos-scenes`` from `bench/detection_accuracy.py`, else
``configs/detector-fcos-scenes.yaml`` is trained into ``runs/bench/tiling-fcos``; ``--epochs``
shortens that training for a quick check) detects them in several ways, each in a fresh process:

- ``tiled-T``: `edh.ops.tiling.tiled_forward` on ``T x T`` tiles at full resolution (what
  ``edh predict RUN big.png --tile T --overlap F --merge nms`` runs), ``F = overlap pixels / T``
  so that every object lies whole in some tile;
- ``resize-S``: the image downscaled to ``S x S`` (antialiased), one whole forward, the boxes scaled back.

``max_detections`` is raised to 100,000 for every way (the default 100 would cap the whole image).
Per way: the median time of ``--repeats`` runs, the peak resident memory above what the process held
before (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), the number of detections, and
recall, precision and AP at IoU 0.5 (each detection, best first, matched to at most one unmatched
box of its class; scores above the head's ``score_thresh``), and recall and precision of the
detections scoring above ``SCORE`` (0.5). Results: ``bench/results/detection_tiling.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import environment, others_cores, peak_rss_mib, reset_peak, write_json

DEFAULT_RUN = Path("runs/bench/fcos-scenes")
FALLBACK_RUN = Path("runs/bench/tiling-fcos")
CAP = 100_000
SCORE = 0.5  # recall and precision are also given for the detections scoring above this


def cpu_flags() -> list[str]:
    """The CPU flags the speed of a forward depends on most (AVX-512, BF16, AMX)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(":", 1)[1].split() if f.startswith(("avx512f", "avx512_bf16", "amx")))


def mosaic(run, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(1, C, size, size)`` normalised image tiled from the run's test scenes, and its objects:
    ``boxes (N, 4)`` in mosaic pixels, ``labels (N,)`` (only objects whole inside the mosaic)."""
    from edh.workflows.data_check import rebuild_data

    test = rebuild_data(run).test
    side = test[0][0].shape[-1]
    per_row = -(-size // side)
    rows, boxes, labels = [], [], []
    for r in range(per_row):
        row = []
        for c in range(per_row):
            image, targets = test[(r * per_row + c) % len(test)]
            row.append(image)
            boxes.append(targets["boxes"].float() + torch.tensor([c * side, r * side] * 2, dtype=torch.float32))
            labels.append(targets["labels"].long())
        rows.append(torch.cat(row, dim=-1))
    boxes, labels = torch.cat(boxes), torch.cat(labels)
    inside = (boxes[:, 2] <= size) & (boxes[:, 3] <= size)
    return torch.cat(rows, dim=-2)[None, :, :size, :size], {"boxes": boxes[inside], "labels": labels[inside]}


def match(found: dict[str, torch.Tensor], truth: dict[str, torch.Tensor], iou: float = 0.5,
          score: float = SCORE) -> dict[str, float]:
    """Detections, best first, each take the unmatched true box of their class they overlap most (if
    above ``iou``). Returns recall and precision over every detection, the same at scores above
    ``score``, and AP at ``iou`` (area under the precision-recall curve, all-point interpolation)."""
    from torchvision.ops import box_iou

    order = found["scores"].argsort(descending=True)
    free = torch.ones(len(truth["boxes"]), dtype=torch.bool)
    hit = torch.zeros(len(order), dtype=torch.bool)
    for rank, index in enumerate(order.tolist()):
        candidates = torch.where(free & (truth["labels"] == int(found["labels"][index])))[0]
        if not len(candidates):
            continue
        overlaps = box_iou(found["boxes"][index:index + 1].float(), truth["boxes"][candidates])[0]
        best = int(overlaps.argmax())
        if overlaps[best] >= iou:
            free[candidates[best]] = False
            hit[rank] = True
    objects = max(1, len(truth["boxes"]))
    true_positives = hit.double().cumsum(0)
    recall_curve = true_positives / objects
    precision_curve = true_positives / torch.arange(1, len(hit) + 1, dtype=torch.double)
    envelope = precision_curve.flip(0).cummax(0).values.flip(0)
    steps = torch.diff(recall_curve, prepend=recall_curve.new_zeros(1))
    above = int((found["scores"][order] > score).sum())
    return {"recall@0.5": float(hit.sum()) / objects, "precision@0.5": float(hit.sum()) / max(1, len(hit)),
            "ap@0.5": float((steps * envelope).sum()),
            f"recall@0.5_score>{score}": float(hit[:above].sum()) / objects,
            f"precision@0.5_score>{score}": float(hit[:above].sum()) / max(1, above)}


def child(args: argparse.Namespace) -> None:
    """One way, in this process: prints a JSON line with time, peak memory, recall and precision."""
    from edh.ops.tiling import tiled_forward
    from edh.workflows.run import load_run

    run = load_run(args.run)
    model = run.model.eval()
    name, head = next((n, h) for n, h in model.tasks().items() if getattr(h, "tiling", None) == "boxes")
    head.set_prediction_settings(max_detections=CAP)
    if hasattr(head, "topk_candidates"):  # FCOS keeps its best candidates per image before NMS: not a cap here
        head.topk_candidates = CAP
    image, truth = mosaic(run, args.size)
    kind, value = args.child.split("-")
    value = int(value)

    def detect() -> dict[str, torch.Tensor]:
        if kind == "tiled":
            overlap = min(0.9, args.overlap_pixels / value)
            merged = tiled_forward(model, image, {name: head}, tile=value, overlap=overlap,
                                   tiles_per_batch=args.tiles_per_batch, merge=args.merge)[name]
            return merged.predictions[0]
        small = F.interpolate(image, size=(value, value), mode="bilinear", antialias=True, align_corners=False)
        found = head.predict(model(small)[name])[0]
        return {**found, "boxes": found["boxes"] * (args.size / value)}

    times = []
    with torch.inference_mode():
        reset_peak()
        before = peak_rss_mib()
        for _ in range(args.repeats):
            start = time.perf_counter()
            found = detect()
            times.append(time.perf_counter() - start)
        peak = peak_rss_mib() - before
    scores = {key: round(value, 4) for key, value in match(found, truth).items()}
    print(json.dumps({"way": args.child, "seconds": round(statistics.median(times), 2), "times": times,
                      "peak_rss_above_mib": round(peak, 1), "objects": len(truth["boxes"]),
                      "detections": len(found["boxes"]), **scores}))


def ensure_run(path: Path | None, epochs: int | None) -> Path:
    from edh.workflows.run import WEIGHTS_FILE

    if path is not None:
        return path
    if (DEFAULT_RUN / WEIGHTS_FILE).is_file() and epochs is None:
        return DEFAULT_RUN
    if not (FALLBACK_RUN / WEIGHTS_FILE).is_file() or epochs is not None:
        from edh.train.runner import train_run
        from edh.workflows.demo import load_config

        overrides = {"train.epochs": epochs, "trainer.check_val_every_n_epoch": 1} if epochs else {}
        print(f"training configs/detector-fcos-scenes.yaml into {FALLBACK_RUN} "
              f"({epochs or 'all'} epochs; the full schedule takes about 2 minutes)", flush=True)
        train_run(load_config("detector-fcos-scenes.yaml", overrides), FALLBACK_RUN, enable_progress_bar=False,
                  force=True)
    return FALLBACK_RUN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--overlap-pixels", type=int, default=40, help="tile overlap in pixels (objects <= 32 px)")
    parser.add_argument("--downscale", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--merge", choices=["nms", "wbf"], default="nms")
    parser.add_argument("--tiles-per-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="train the fallback run for this many epochs")
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.run = ensure_run(args.run, args.epochs)
    quiet = others_cores(1.0)
    print(f"run {args.run}, {args.size}x{args.size} mosaic, tiles {args.tiles} overlapping by {args.overlap_pixels} "
          f"px, merge {args.merge}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU {environment()['cpu']} {' '.join(cpu_flags())}; other processes used {quiet:.2f} cores", flush=True)
    rows = []
    ways = [f"tiled-{t}" for t in args.tiles] + [f"resize-{s}" for s in args.downscale]
    for way in ways:
        command = [sys.executable, __file__, "--child", way, "--run", str(args.run), "--size", str(args.size),
                   "--overlap-pixels", str(args.overlap_pixels), "--merge", args.merge,
                   "--tiles-per-batch", str(args.tiles_per_batch), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{way} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{way:<12} {r['seconds']:>8.2f} s  peak RSS +{r['peak_rss_above_mib']:>8.1f} MiB  "
              f"{r['detections']:>6} detections  recall@0.5 {r['recall@0.5']:.4f}  AP@0.5 {r['ap@0.5']:.4f}  "
              f"score > {SCORE}: recall {r[f'recall@0.5_score>{SCORE}']:.4f} precision "
              f"{r[f'precision@0.5_score>{SCORE}']:.4f}  ({r['objects']} objects)", flush=True)
    after = others_cores(1.0)
    print(f"(other processes used {after:.2f} cores after the runs; medians of {args.repeats} runs)")
    write_json("detection_tiling", {"environment": {**environment(), "cpu_flags": cpu_flags()}, "run": str(args.run),
                                    "size": args.size, "overlap_pixels": args.overlap_pixels, "merge": args.merge,
                                    "tiles_per_batch": args.tiles_per_batch, "rows": rows,
                                    "others_cores_before_after": [quiet, after]})


if __name__ == "__main__":
    main()
