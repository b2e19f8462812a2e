"""edh's YOLOv8-style detector on CPU: forward images/s of the ``n`` preset at 640x640, and the size of n / s / m.

Run: ``python bench/yolo.py [--repeats N] [--quick] [--threads T] [--max-wait S] [--size 640]``.

Model: ``src/edh/configs/yolov8n.yaml`` (csp_darknet n + pafpn n + yolo head, 80 classes), untrained
(seeded), eval mode. Forward: ``torch.inference_mode``, batch 1 and 8, images in [0, 1]; the model's
raw outputs (class logits, box distributions), and one row with ``predict`` on top (top-k, DFL
decoding, class-wise NMS). edh as built (contiguous), as `edh.utils.perf.InferenceModel` runs it for
``edh predict / eval --fast`` (channels_last + BatchNorm folded) and with ``--compile`` (torch.compile,
inductor's freezing pass, compiled before timing). Contenders of a batch size are timed round-robin
(`common.measure`), medians reported; results also go to ``bench/results/yolo.json``.

Size: parameters and GFLOPs at 640x640 of n / s / m from `edh.inspection.describe.describe_model`
(what ``edh describe`` prints: MACs; GFLOPs = 2 x MACs, as the published YOLOv8 figures count them),
beside the published YOLOv8 detection models.
"""

from __future__ import annotations

import gc
from typing import Any, Callable

import torch
from common import (Contender, apply_threads, base_parser, environment, measure, noisy_warning, print_table,
                    seed_everything, summarize, write_json)

from edh.core.model import Model
from edh.core.spec import load_spec
from edh.inspection.describe import describe_model
from edh.utils.perf import InferenceModel
from edh.workflows.demo import config_path

HEAD = "detections"
COLUMNS = ["name", "items_per_s", "ms_per_step", "best_items_per_s", "quiet_samples"]
PUBLISHED = {"n": (3_157_200, 8.7), "s": (11_166_560, 28.6), "m": (25_902_640, 78.9)}  # params, GFLOPs at 640


def yolo_model(preset: str) -> torch.nn.Module:
    seed_everything(0)
    return Model(load_spec(config_path(f"yolov8{preset}.yaml")), pretrained=False).eval()


def forward(model: Callable[..., Any], images: torch.Tensor, predict_with: torch.nn.Module | None = None
            ) -> Callable[[], Any]:
    """One inference forward; with ``predict_with`` (the model's head) its ``predict`` on the outputs too."""
    def step() -> Any:
        with torch.inference_mode():
            outputs = model(images)
            return predict_with.predict(outputs[HEAD]) if predict_with is not None else outputs

    return step


def speed_group(batch: int, size: int, repeats: int, max_wait: float) -> list[dict[str, Any]]:
    model = yolo_model("n")
    images = torch.rand(batch, 3, size, size)
    fast, compiled = InferenceModel(model), InferenceModel(model, compile=True)
    with torch.inference_mode():  # same outputs, and compile before timing
        reference = model(images)[HEAD]["cls_logits"]
        errors = {name: (m(images)[HEAD]["cls_logits"] - reference).abs().max().item()
                  for name, m in (("--fast", fast), ("--compile", compiled))}
    print(f"batch {batch}: max |logit diff| vs eager {errors}; compiled: {compiled.compiled}", flush=True)
    contenders = [
        Contender("edh yolov8n eager (as built)", forward(model, images), batch, {"kind": "eager"}),
        Contender("edh yolov8n --fast (CL + BN folded)", forward(fast, images), batch, {"kind": "fast"}),
        Contender("edh yolov8n --compile (--fast + torch.compile)", forward(compiled, images), batch,
                  {"kind": "compile", "compiled": compiled.compiled}),
        Contender("edh yolov8n --fast + predict (NMS)", forward(fast, images, model.heads[HEAD]), batch,
                  {"kind": "fast + predict"}),
    ]
    rows = summarize(contenders, measure(contenders, repeats, 1, warmup=1, max_wait=max_wait))
    print_table(rows, COLUMNS, f"\nyolov8n forward, batch {batch}, {size}x{size}, 80 classes (items = images)")
    warning = noisy_warning(rows)
    if warning:
        print(warning)
    del contenders, compiled, fast, model
    gc.collect()
    return rows


def size_rows() -> list[dict[str, Any]]:
    rows = []
    for preset, (params, gflops) in PUBLISHED.items():
        description = describe_model(yolo_model(preset), (640, 640))
        roles = [r for r in description.rows if not r.role.startswith(" ")]  # branch rows repeat their head's
        ours = sum(r.params for r in roles)
        macs = sum(r.macs for r in roles)
        rows.append({"name": f"yolov8{preset}", "params": ours, "published_params": params,
                     "GMACs": macs / 1e9, "GFLOPs": 2 * macs / 1e9, "published_GFLOPs": gflops})
        gc.collect()
    print_table(rows, ["name", "params", "published_params", "GMACs", "GFLOPs", "published_GFLOPs"],
                "\nSize at 640x640, 80 classes (edh describe; GFLOPs = 2 x MACs)")
    return rows


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=7)
    parser.add_argument("--size", type=int, default=640, help="square input side (default 640)")
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    env = environment()
    print(f"torch {env['torch']}, {threads} threads, {env['cpu']}; {repeats} round-robin repeats, medians", flush=True)
    sizes = size_rows()
    speed = {batch: speed_group(batch, args.size, repeats, args.max_wait) for batch in (1, 8)}
    report = {"environment": env, "repeats": repeats, "size": args.size, "presets": sizes, "forward": speed}
    print(f"\nwrote {write_json('yolo', report)}")


if __name__ == "__main__":
    main()
