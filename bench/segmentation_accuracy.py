"""Validation / test mIoU reached and time taken by the segmentation configs, as `edh train` runs them.

    python bench/segmentation_accuracy.py [--only unet-resnet18 fpn-resnet18 unet-resnet34] [--out runs/bench]

Target (issue 3): a U-Net with a resnet18 or resnet34 encoder on `scenes` (64x64) reaches validation
mIoU >= 0.85 (background included) in <= 5 minutes on this machine. The machine is shared, so
besides wall time each row gives this process's CPU seconds and the cores other processes used
meanwhile (from /proc/stat): CPU seconds / 2 cores is what the run would take alone on 2 cores.
Prints a table and writes bench/results/segmentation_accuracy.json.
"""

from __future__ import annotations

from pathlib import Path

import torch
from training import accuracy_parser, parse_and_apply, timed_train, write_rows

from edh.workflows.demo import load_config
from edh.workflows.evaluate import evaluate_run

CASES = {  # name: (config, overrides, target mIoU, budget seconds)
    "unet-resnet18": ("unet-scenes.yaml", {}, 0.85, 300),
    "unet-resnet34": ("unet-scenes.yaml", {"model.encoder.name": "resnet34"}, 0.85, 300),
    "fpn-resnet18": ("fpn-segmentation-scenes.yaml", {}, None, None),
}


def run_case(name: str, out: Path) -> dict:
    config, overrides, target, budget = CASES[name]
    run, times = timed_train(load_config(config, overrides), out / name)
    val = evaluate_run(run, "val", progress=False).metrics["mask"]
    test = evaluate_run(run, "test", progress=False).metrics["mask"]
    met = None if target is None else val["miou"] >= target and times["seconds"] <= budget
    return {"case": name, "config": f"configs/{config}", "overrides": overrides, "val_miou": round(val["miou"], 4),
            "test_miou": round(test["miou"], 4), "test_pixel_acc": round(test["pixel_acc"], 4), **times,
            "target_miou": target, "budget_s": budget, "threads": torch.get_num_threads(), "met": met}


def main() -> None:
    args = parse_and_apply(accuracy_parser(__doc__.splitlines()[0], sorted(CASES), ["unet-resnet18"]))
    rows = [run_case(name, Path(args.out)) for name in args.only]
    header = f"{'case':<14} {'val mIoU':>8} {'test mIoU':>9} {'target':>6} {'wall s':>7} {'cpu/2 s':>7} {'others':>6}  met"
    print(header)
    for r in rows:
        target = "" if r["target_miou"] is None else f"{r['target_miou']:.2f}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['case']:<14} {r['val_miou']:>8.4f} {r['test_miou']:>9.4f} {target:>6} {r['seconds']:>7.1f} "
              f"{r['alone_on_2_cores_s']:>7.1f} {r['others_cores']:>6.2f}  {met}")
    print("(others: cores other processes used on average during the run; cpu/2: this run's CPU time over 2 cores)")
    write_rows("segmentation_accuracy", rows)



if __name__ == "__main__":
    main()
