"""How much `edh train` slows down on a machine shared with other CPU-bound processes.

Starts K busy processes itself (pure-Python spin loops, one core each), times
``edh train configs/digits-resnet18.yaml`` (short: ``--epochs 1 --max-steps S``) in a subprocess with
edh's defaults, and with comparison rows (``--threads 1``; OpenMP threads that spin,
``OMP_WAIT_POLICY=ACTIVE``), then stops the busy processes. Prints each wall time, its slowdown against
the same variant with K=0, and, when K+1 > cores, the target ``1.5 x (K+1)/cores`` and whether it is met.

Run it alone (it refuses to start on a busy machine unless ``--ignore-busy``)::

    .venv/bin/python bench/shared_machine.py                      # K = 0, 1, 3; 2 repeats
    .venv/bin/python bench/shared_machine.py --busy 0,3 --repeats 1 --max-steps 5   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import format_table, others_cores, write_json

from edh.utils.threads import usable_cores

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "configs" / "digits-resnet18.yaml"
SPIN = "while True: pass"
# name -> (extra edh arguments, extra environment)
VARIANTS = {
    "default": ([], {}),
    "--threads 1": (["--threads", "1"], {}),
    "spinning OpenMP": ([], {"OMP_WAIT_POLICY": "ACTIVE"}),
}


def start_busy(count: int) -> list[subprocess.Popen]:
    """``count`` processes that each keep one core busy."""
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]


def stop_busy(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def train_seconds(out: Path, args: list[str], env_extra: dict[str, str], epochs: int, max_steps: int) -> float:
    """Wall seconds of one ``edh train`` (startup included), with the thread settings edh picks itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "EDH_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env.update(env_extra)
    command = [sys.executable, "-m", "edh.cli", *args, "train", str(SPEC), "--out", str(out), "--force",
               "--epochs", str(epochs), "--max-steps", str(max_steps)]
    begin = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"edh train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", default="0,1,3", help="comma-separated numbers of busy processes (K)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=2, help="runs per (K, variant); the median is reported")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--ignore-busy", action="store_true", help="run even when other processes use the CPU")
    opts = parser.parse_args()
    busy_counts = [int(k) for k in opts.busy.split(",")]
    variants = opts.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    cores = usable_cores()
    others = others_cores(window=1.0)
    print(f"usable cores: {cores}; other processes use {others:.2f} cores before the bench starts")
    if others > 0.3 and not opts.ignore_busy:
        raise SystemExit("the machine is not quiet: run the bench alone (or pass --ignore-busy)")
    out = Path(tempfile.mkdtemp(prefix="edh-shared-"))
    seconds: dict[tuple[int, str], float] = {}
    try:
        for k in busy_counts:
            busy = start_busy(k)
            try:
                time.sleep(0.5)  # let the spinners get going
                for variant in variants:
                    args, env = VARIANTS[variant]
                    runs = [train_seconds(out / "run", args, env, opts.epochs, opts.max_steps)
                            for _ in range(opts.repeats)]
                    seconds[k, variant] = statistics.median(runs)
                    print(f"K={k} {variant:<16s} {seconds[k, variant]:7.2f} s  (runs: "
                          f"{', '.join(f'{s:.2f}' for s in runs)})", flush=True)
            finally:
                stop_busy(busy)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rows = []
    for (k, variant), wall in seconds.items():
        alone = seconds.get((0, variant))
        slowdown = wall / alone if alone else None
        target = 1.5 * (k + 1) / cores if k + 1 > cores else None
        met = None if target is None or slowdown is None else slowdown <= target
        rows.append({"K": k, "variant": variant, "wall_s": round(wall, 2),
                     "slowdown": None if slowdown is None else round(slowdown, 2),
                     "target": "-" if target is None else round(target, 2),
                     "met": "-" if met is None else ("met" if met else "MISSED")})
    print(format_table(rows, ["K", "variant", "wall_s", "slowdown", "target", "met"],
                       title=f"edh train digits-resnet18, {opts.max_steps} steps, {cores} cores, K busy processes"))
    write_json("shared_machine", {"cores": cores, "others_cores_before": others, "max_steps": opts.max_steps,
                                  "repeats": opts.repeats, "rows": rows})


if __name__ == "__main__":
    main()
