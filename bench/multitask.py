"""Several heads on one model against the same model with one head, on `scenes`, as `edh train` runs them.

    python bench/multitask.py [--only seg+cls seg cls det+seg+count] [--out runs/bench]

- ``seg+cls``: ``configs/multitask-seg-cls-scenes.yaml`` (U-Net mask head after the decoder +
  classification head after the encoder); ``seg``: the same spec without the ``label`` head;
  ``cls``: the same spec without the ``mask`` head and without the decoder (a plain classifier).
  Target (issue 6): the two-head model's validation mIoU within 0.02 of ``seg`` and its validation
  accuracy within 0.02 of ``cls``, trained in < 1.3x the time of ``seg``.
- ``det+seg+count``: ``configs/multitask-det-seg-count-scenes.yaml`` (YOLO-style detector, mask and
  object counter on one ResNet-18 + FPN, uncertainty weighting); its metrics are reported, no target.

Each row gives wall time, CPU time / 2 (the time alone on 2 cores) and the cores other processes used.
Prints a table and the comparisons; writes bench/results/multitask.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training import accuracy_parser, parse_and_apply, timed_train, write_rows

from edh.workflows.demo import load_config
from edh.workflows.evaluate import evaluate_run

SEG_CLS = "multitask-seg-cls-scenes.yaml"
CASES = {  # name: (config, overrides)
    "seg+cls": (SEG_CLS, {}),
    "seg": (SEG_CLS, {"model.heads.label": None}),
    "cls": (SEG_CLS, {"model.heads.mask": None, "model.decoder": None}),
    "det+seg+count": ("multitask-det-seg-count-scenes.yaml", {}),
}
METRICS = {"mask": ("miou",), "label": ("acc",), "detections": ("mAP@0.5", "mAP"), "count": ("mae",)}


def run_case(name: str, out: Path) -> dict[str, Any]:
    config, overrides = CASES[name]
    run, times = timed_train(load_config(config, overrides), out / name)
    val = evaluate_run(run, "val", progress=False).metrics
    metrics = {f"val_{head}_{key}": round(float(val[head][key]), 4)
               for head in run.model.heads for key in METRICS.get(head, ())}
    return {"case": name, "config": f"configs/{config}",
            "overrides": {k: "removed" if v is None else v for k, v in overrides.items()}, **metrics, **times}


def compare(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's three checks, for the cases that ran."""
    both, seg, cls = rows.get("seg+cls"), rows.get("seg"), rows.get("cls")
    checks = []
    if both and seg:
        gap = both["val_mask_miou"] - seg["val_mask_miou"]
        checks.append({"check": "mIoU, seg+cls - seg only", "value": round(gap, 4), "target": ">= -0.02",
                       "met": gap >= -0.02})
        ratio = both["seconds"] / seg["seconds"]
        checks.append({"check": "training time, seg+cls / seg only", "value": round(ratio, 3), "target": "< 1.3",
                       "met": ratio < 1.3})
    if both and cls:
        gap = both["val_label_acc"] - cls["val_label_acc"]
        checks.append({"check": "accuracy, seg+cls - cls only", "value": round(gap, 4), "target": ">= -0.02",
                       "met": gap >= -0.02})
    return checks


def main() -> None:
    args = parse_and_apply(accuracy_parser(__doc__.splitlines()[0], list(CASES), ["cls", "seg", "seg+cls"]))
    rows = {name: run_case(name, Path(args.out) / "multitask") for name in args.only}
    for r in rows.values():
        values = "  ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in r.items() if k.startswith("val_"))
        print(f"{r['case']:<14} {values:<60} wall {r['seconds']:>6.1f} s  cpu/2 {r['alone_on_2_cores_s']:>6.1f} s  "
              f"others {r['others_cores']:.2f}")
    checks = compare(rows)
    for c in checks:
        print(f"{c['check']:<36} {c['value']:>8}  target {c['target']:<8} {'yes' if c['met'] else 'NO'}")
    write_rows("multitask", [*rows.values(), *({"case": f"check: {c['check']}", **c} for c in checks)])


if __name__ == "__main__":
    main()
