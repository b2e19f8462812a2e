"""Large images: sliding-window inference against resizing and against one whole-image forward.

    python bench/segmentation_tiling.py [--run RUN] [--size 2048] [--tile 256] [--overlap 0.25] [--repeats 3]

A 2048x2048 image (``--size``) is a mosaic of `scenes` test images (64x64 each, 4-6 digits of
12-20 px) with its ground-truth mask. The U-Net run (``--run``; default: ``runs/bench/decoder-unet``
from `bench/segmentation_decoders.py`, else ``configs/unet-scenes.yaml`` is trained into
``runs/bench/tiling-unet``) segments it three ways, each in a fresh process:

- ``resize``: what `edh predict` did before: the image resized to the run's 64x64, the logits
  up-sampled back to 2048x2048;
- ``whole``: one forward at full resolution (fits here: a U-Net is fully convolutional);
- ``tiled``: `edh.ops.tiling.tiled_forward` (what ``edh predict --tile 256 --overlap 0.25`` runs).

Per way: the median time of ``--repeats`` forwards, the peak resident memory above what the process
held before the first forward (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), and the
mIoU against the ground truth (background included). Results: ``bench/results/segmentation_tiling.json``.
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

DEFAULT_RUN = Path("runs/bench/decoder-unet")
FALLBACK_RUN = Path("runs/bench/tiling-unet")


def mosaic(run, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, C, size, size)`` normalised image and ``(size, size)`` mask tiled from the run's test scenes."""
    from edh.workflows.data_check import rebuild_data

    test = rebuild_data(run).test
    side = test[0][0].shape[-1]
    per_row = -(-size // side)
    images, masks = [], []
    for index in range(per_row * per_row):
        image, targets = test[index % len(test)]
        images.append(image)
        masks.append(targets["mask"])
    rows = [torch.cat(images[r * per_row:(r + 1) * per_row], dim=-1) for r in range(per_row)]
    mask_rows = [torch.cat(masks[r * per_row:(r + 1) * per_row], dim=-1) for r in range(per_row)]
    return torch.cat(rows, dim=-2)[None, :, :size, :size], torch.cat(mask_rows, dim=-2)[:size, :size]


def child(args: argparse.Namespace) -> None:
    """One way, in this process: prints a JSON line with time, peak memory and mIoU."""
    from torchmetrics.classification import MulticlassJaccardIndex

    from edh.ops.tiling import tiled_forward
    from edh.workflows.run import load_run

    run = load_run(args.run)
    model = run.model.eval()
    head = next(iter(model.tasks()))
    num_classes = model.tasks()[head].num_classes
    image, mask = mosaic(run, args.size)
    run_size = tuple(run.info.image_size)

    def forward() -> torch.Tensor:
        if args.child == "resize":
            small = F.interpolate(image, size=run_size, mode="bilinear", antialias=True, align_corners=False)
            logits = model(small)[head]
            return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        if args.child == "whole":
            return model(image)[head]
        return tiled_forward(model, image, model.tasks(), tile=args.tile, overlap=args.overlap)[head]

    times = []
    with torch.inference_mode():
        reset_peak()
        before = peak_rss_mib()
        for _ in range(args.repeats):
            start = time.perf_counter()
            logits = forward()
            times.append(time.perf_counter() - start)
            prediction = logits.argmax(dim=1)[0]
            del logits
        peak = peak_rss_mib() - before
    miou = MulticlassJaccardIndex(num_classes, average="macro")(prediction, mask).item()
    print(json.dumps({"way": args.child, "seconds": round(statistics.median(times), 2), "times": times,
                      "peak_rss_above_mib": round(peak, 1), "miou": round(miou, 4)}))


def ensure_run(path: Path | None) -> Path:
    from edh.workflows.run import WEIGHTS_FILE

    if path is not None:
        return path
    if (DEFAULT_RUN / WEIGHTS_FILE).is_file():
        return DEFAULT_RUN
    if not (FALLBACK_RUN / WEIGHTS_FILE).is_file():
        from edh.train.runner import train_run
        from edh.workflows.demo import load_config

        print(f"training configs/unet-scenes.yaml into {FALLBACK_RUN} (about 3 minutes)", flush=True)
        train_run(load_config("unet-scenes.yaml"), FALLBACK_RUN, enable_progress_bar=False, force=True)
    return FALLBACK_RUN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["resize", "whole", "tiled"], default=None)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.run = ensure_run(args.run)
    quiet = others_cores(1.0)
    print(f"run {args.run}, {args.size}x{args.size} mosaic, tile {args.tile}, overlap {args.overlap}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; other processes used {quiet:.2f} cores",
          flush=True)
    rows = []
    for way in ("resize", "whole", "tiled"):
        command = [sys.executable, __file__, "--child", way, "--run", str(args.run), "--size", str(args.size),
                   "--tile", str(args.tile), "--overlap", str(args.overlap), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{way:<7} {r['seconds']:>7.2f} s  peak RSS +{r['peak_rss_above_mib']:>7.1f} MiB  mIoU {r['miou']:.4f}",
              flush=True)
    after = others_cores(1.0)
    print(f"(other processes used {after:.2f} cores after the runs; medians of {args.repeats} forwards)")
    write_json("segmentation_tiling", {"environment": environment(), "run": str(args.run), "size": args.size,
                                       "tile": args.tile, "overlap": args.overlap, "rows": rows,
                                       "others_cores_before_after": [quiet, after]})


if __name__ == "__main__":
    main()
