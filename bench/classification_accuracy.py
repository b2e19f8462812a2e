"""Accuracy reached and wall time taken by the classification configs, as `edh train` runs them.

    python bench/classification_accuracy.py [--only digits fashion] [--out runs/bench]

Targets (issue 2): digits >= 0.97 test accuracy in <= 2 minutes; Fashion-MNIST >= 0.90 in <= 10 minutes.
Prints a table (wall time, and CPU time / 2: the time with both cores free) and writes
bench/results/classification_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from edh.demo import config_path
from edh.evaluate import evaluate_run
from edh.spec import load_spec
from edh.train.runner import train_run

CASES = {
    "digits": ("digits-resnet18.yaml", 0.97, 120),
    "fashion": ("fashion-mnist-conv.yaml", 0.90, 600),
}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (what the run would need with 2 free cores x 2)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    rows = []
    for name in args.only:
        config, target, budget = CASES[name]
        start = time.perf_counter()
        cpu_start = _cpu_seconds()
        run = train_run(load_spec(config_path(config)), Path(args.out) / name, enable_progress_bar=False)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_start
        accuracy = evaluate_run(run, "test", progress=False).metrics["label"]["acc"]
        rows.append({"case": name, "config": f"configs/{config}", "test_acc": round(accuracy, 4),
                     "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                     "alone_on_2_cores_s": round(cpu / 2, 1), "target_acc": target, "budget_s": budget,
                     "met": accuracy >= target and seconds <= budget})
    print(f"{'case':<8} {'config':<32} {'test acc':>8} {'target':>7} {'wall s':>7} {'alone s':>7} {'budget':>7}  met")
    for r in rows:
        print(f"{r['case']:<8} {r['config']:<32} {r['test_acc']:>8.4f} {r['target_acc']:>7.2f} {r['seconds']:>7.1f} "
              f"{r['alone_on_2_cores_s']:>7.1f} {r['budget_s']:>7}  {'yes' if r['met'] else 'NO'}")
    out = Path("bench/results/classification_accuracy.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
