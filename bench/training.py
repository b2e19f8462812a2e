"""What the accuracy benchmarks share: train a config as `edh train` does, timed three ways.

Every accuracy script reports, per run, the wall time (what the target is about), this process's CPU
time over 2 cores (the time it would take alone on this 2-core machine) and ``others_cores``: how many
cores other processes used meanwhile, on average (from /proc/stat), so a number measured on a busy
machine says so.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from edh.spec import RunSpec
from edh.train.runner import train_run


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy, all processes (from /proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (data-loader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed_train(spec: RunSpec, out: Path, **trainer_options: Any) -> tuple[Any, dict[str, float]]:
    """Train ``spec`` into a fresh ``out`` (no checkpoint left from before); return the run and its times."""
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu, busy = time.perf_counter(), own_cpu_seconds(), machine_busy_seconds()
    run = train_run(spec, out, enable_progress_bar=False, **trainer_options)
    wall, cpu, busy = time.perf_counter() - wall, own_cpu_seconds() - cpu, machine_busy_seconds() - busy
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
