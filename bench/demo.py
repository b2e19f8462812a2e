"""Wall time and results of ``edh demo``: every example model trained and evaluated, one after another.

    python bench/demo.py [--out runs/bench/demo]

Target (issue 6): the whole demo (classifier, detector, U-Net, autoencoder, translator, multi-task
model, with the short schedules of `edh.workflows.demo.DEMOS`, and the report) in <= 10 minutes on this machine.
Runs ``edh demo`` as a user does (a subprocess), so imports and data preparation count; prints each
model's time and test metrics and the total; writes bench/results/demo.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import machine_busy_seconds
from training import write_rows

from edh.workflows.demo import DEMOS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench/demo")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    edh = Path(sys.executable).with_name("edh")
    wall, busy = time.perf_counter(), machine_busy_seconds()
    done = subprocess.run([str(edh), "demo", "--out", str(out)], capture_output=True, text=True)
    wall, busy = time.perf_counter() - wall, machine_busy_seconds() - busy
    if done.returncode:
        sys.exit(f"edh demo failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.split()[:1] and line.split()[0] in
             {d.name for d in DEMOS}]
    print("\n".join(lines))
    rows = [{"case": "edh demo", "seconds": round(wall, 1), "models": len(DEMOS), "budget_s": 600,
             "cores_busy_on_average": round(busy / wall, 2), "met": wall <= 600, "per_model": lines}]
    print(f"total {wall:.1f} s for {len(DEMOS)} models (budget 600 s): {'met' if wall <= 600 else 'NOT met'}")
    write_rows("demo", rows)


if __name__ == "__main__":
    main()
