"""Validation / test COCO mAP reached and time taken by the detection configs, as `edh train` runs them.

    python bench/detection_accuracy.py [--only fcos-scenes fasterrcnn-scenes yolo-scenes maskrcnn-scenes] [--out runs/bench]

Targets on `scenes` (1-3 digit sprites of 16-32 px, 10 classes): the FCOS detector
(``configs/detector-fcos-scenes.yaml``) reaches validation mAP@0.5 >= 0.80 within 10 minutes of
training (issue 4); Faster R-CNN (``configs/fasterrcnn-scenes.yaml``) reaches >= 0.70 within 15
minutes; the YOLOv8-n model (``configs/yolo-scenes.yaml``) is reported after 10 minutes beside them
(issue 16, no target); Mask R-CNN (``configs/maskrcnn-scenes.yaml``) reaches validation mask
mAP@0.5 >= 0.80 within 15 minutes (issue 16).
Each run's wall time is also capped at its budget (Lightning ``max_time``), so a slow machine shows
as a lower mAP, never as a longer run. The machine is shared, so besides wall time each row gives
this process's CPU seconds and the cores other processes used meanwhile (from /proc/stat): CPU
seconds / 2 cores is what the run would take alone on 2 cores. Prints a table and writes
``bench/results/detection_accuracy.json``.
"""

from __future__ import annotations

from pathlib import Path

from training import accuracy_parser, epochs_done, parse_and_apply, timed_train, write_rows

from edh.workflows.demo import load_config
from edh.workflows.evaluate import evaluate_run

CASES = {  # name: (config, overrides, target of the validation metric, budget seconds, metric the target is for)
    "fcos-scenes": ("detector-fcos-scenes.yaml", {}, 0.80, 600, "mAP@0.5"),
    "fasterrcnn-scenes": ("fasterrcnn-scenes.yaml", {}, 0.70, 900, "mAP@0.5"),
    "yolo-scenes": ("yolo-scenes.yaml", {}, None, 600, "mAP@0.5"),
    "maskrcnn-scenes": ("maskrcnn-scenes.yaml", {}, 0.80, 900, "mask_mAP@0.5"),
}


def run_case(name: str, out: Path, cap: bool = True) -> dict:
    config, overrides, target, budget, metric = CASES[name]
    stop = {"max_time": {"seconds": budget}} if budget and cap else {}
    run, times = timed_train(load_config(config, overrides), out / name, **stop)
    head = next(iter(run.model.heads))
    val = evaluate_run(run, "val", progress=False).metrics[head]
    test = evaluate_run(run, "test", progress=False).metrics[head]
    epochs = epochs_done(out / name)
    met = None if target is None else val[metric] >= target and times["seconds"] <= budget * 1.05 + 60
    masks = {f"{split}_mask_map50": round(found["mask_mAP@0.5"], 4) for split, found in (("val", val), ("test", test))
             if "mask_mAP@0.5" in found}
    return {"case": name, "config": f"configs/{config}", "overrides": overrides, "epochs_done": epochs, **masks,
            "val_map50": round(val["mAP@0.5"], 4), "val_map": round(val["mAP"], 4),
            "test_map50": round(test["mAP@0.5"], 4), "test_map": round(test["mAP"], 4),
            "test_map75": round(test["mAP@0.75"], 4), **times, "target": target, "target_metric": metric, "budget_s": budget, "met": met}


def main() -> None:
    parser = accuracy_parser(__doc__.splitlines()[0], sorted(CASES), sorted(CASES))
    parser.add_argument("--no-cap", action="store_true", help="train the full schedule even past the budget")
    args = parse_and_apply(parser)
    rows = [run_case(name, Path(args.out), cap=not args.no_cap) for name in args.only]
    header = (f"{'case':<18} {'epochs':>6} {'val mAP50':>9} {'test mAP50':>10} {'test mAP':>8} {'val mask50':>10} "
              f"{'target':>22} {'wall s':>7} {'cpu/2 s':>7} {'others':>6}  met")
    print(header)
    for r in rows:
        target = "" if r["target"] is None else f"{r['target_metric']} {r['target']:.2f}"
        mask = f"{r['val_mask_map50']:.4f}" if "val_mask_map50" in r else "-"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['case']:<18} {r['epochs_done']:>6} {r['val_map50']:>9.4f} {r['test_map50']:>10.4f} "
              f"{r['test_map']:>8.4f} {mask:>10} {target:>22} {r['seconds']:>7.1f} {r['alone_on_2_cores_s']:>7.1f} "
              f"{r['others_cores']:>6.2f}  {met}")
    print("(others: cores other processes used on average during the run; cpu/2: this run's CPU time over 2 cores)")
    write_rows("detection_accuracy", rows)


if __name__ == "__main__":
    main()
