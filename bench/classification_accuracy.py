"""Accuracy reached and wall time taken by the classification configs, as `edh train` runs them.

    python bench/classification_accuracy.py [--only digits fashion] [--out runs/bench]

Targets (issue 2): digits >= 0.97 test accuracy in <= 2 minutes; Fashion-MNIST >= 0.90 in <= 10 minutes.
Prints a table (wall time, and CPU time / 2: the time with both cores free) and writes
bench/results/classification_accuracy.json.
"""

from __future__ import annotations

from pathlib import Path

from training import accuracy_parser, parse_and_apply, timed_train, write_rows

from edh.workflows.demo import load_config
from edh.workflows.evaluate import evaluate_run

CASES = {
    "digits": ("digits-resnet18.yaml", 0.97, 120),
    "fashion": ("fashion-mnist-conv.yaml", 0.90, 600),
}


def main() -> None:
    args = parse_and_apply(accuracy_parser(__doc__.splitlines()[0], sorted(CASES), sorted(CASES)))
    rows = []
    for name in args.only:
        config, target, budget = CASES[name]
        run, times = timed_train(load_config(config), Path(args.out) / name)
        accuracy = evaluate_run(run, "test", progress=False).metrics["label"]["acc"]
        rows.append({"case": name, "config": f"configs/{config}", "test_acc": round(accuracy, 4), **times,
                     "target_acc": target, "budget_s": budget,
                     "met": accuracy >= target and times["seconds"] <= budget})
    print(f"{'case':<8} {'config':<32} {'test acc':>8} {'target':>7} {'wall s':>7} {'cpu/2 s':>7} {'others':>6} "
          f"{'budget':>7}  met")
    for r in rows:
        print(f"{r['case']:<8} {r['config']:<32} {r['test_acc']:>8.4f} {r['target_acc']:>7.2f} {r['seconds']:>7.1f} "
              f"{r['alone_on_2_cores_s']:>7.1f} {r['others_cores']:>6.2f} {r['budget_s']:>7}  "
              f"{'yes' if r['met'] else 'NO'}")
    write_rows("classification_accuracy", rows)


if __name__ == "__main__":
    main()
