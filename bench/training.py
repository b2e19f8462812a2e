"""What the accuracy benchmarks share: train a config as `edh train` does, timed three ways.

Every accuracy script reports, per run, the wall time (what the target is about), this process's CPU
time over 2 cores (the time it would take alone on this 2-core machine) and ``others_cores``: how many
cores other processes used meanwhile, on average (from /proc/stat), so a number measured on a busy
machine says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

from common import apply_threads, machine_busy_seconds, own_cpu_seconds

from edh.core.spec import RunSpec
from edh.train.runner import train_run


def accuracy_parser(description: str, cases: list[str], default: list[str]) -> argparse.ArgumentParser:
    """The options every accuracy script takes: ``--only CASE ...``, ``--out DIR`` and ``--threads``
    (applied by `parse_and_apply`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", nargs="*", choices=cases, default=default, help="cases to run, in order")
    parser.add_argument("--out", default="runs/bench", help="where the run folders go")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's). On a busy shared machine 1 thread can be "
                             "several times faster than 2: each op's threads must all get a core at once")
    return parser


def parse_and_apply(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    apply_threads(args.threads)
    return args


def timed_train(spec: RunSpec, out: Path, **trainer_options: Any) -> tuple[Any, dict[str, float]]:
    """Train ``spec`` into a fresh ``out`` (no checkpoint left from before); return the run and its times."""
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu, busy = time.perf_counter(), own_cpu_seconds(children=True), machine_busy_seconds()
    run = train_run(spec, out, enable_progress_bar=False, **trainer_options)
    wall, cpu, busy = time.perf_counter() - wall, own_cpu_seconds(children=True) - cpu, machine_busy_seconds() - busy
    return run, {"seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "alone_on_2_cores_s": round(cpu / 2, 1),
                 "others_cores": round(max(0.0, busy - cpu) / wall, 2)}


def epochs_done(run_dir: Path) -> int:
    """Epochs trained up to the last validation (from the run's metrics.csv)."""
    metrics = run_dir / "metrics.csv"
    rows = list(csv.DictReader(metrics.open())) if metrics.is_file() else []
    return int(float(rows[-1]["epoch"])) + 1 if rows else 0


def write_rows(name: str, rows: list[dict[str, Any]]) -> Path:
    """Merge ``rows`` into bench/results/NAME.json by ``case`` (cases not run this time are kept)."""
    path = Path(__file__).resolve().parent / "results" / f"{name}.json"
    old = json.loads(path.read_text()) if path.is_file() else []
    fresh = {r["case"] for r in rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r for r in old if r.get("case") not in fresh] + rows, indent=2))
    print(f"wrote {path}")
    return path
