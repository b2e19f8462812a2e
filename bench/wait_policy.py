"""What OpenMP's wait policy costs a latency-bound job on a quiet machine: edh's greedy generation.

The ``edh`` command line asks OpenMP threads to sleep rather than spin between parallel regions
(``OMP_WAIT_POLICY=PASSIVE``, `edh.utils.threads`): on a machine shared with other CPU-bound work that
keeps a training near its fair share (``python bench/shared_machine.py``). A decoding step is the
opposite case: about a hundred small ops per token, each a parallel region that must wake the
sleeping threads again. This bench runs the same job in fresh processes (OpenMP reads the policy once,
when torch loads) under each policy, round-robin, on a quiet machine:

- greedy: ``bench/translation.py``'s 7.7M-parameter translator, batch 8, 64 new tokens (tokens/s);
- forward: ResNet-18 ``--fast`` forward, batch 8, 224x224 (images/s), a job of few, large ops.

Run: ``python bench/wait_policy.py [--repeats N] [--policies unset,PASSIVE,ACTIVE]``; results also in
``bench/results/wait_policy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import environment, format_table, others_cores, write_json

HERE = Path(__file__).resolve().parent
POLICIES = {"unset": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"},
            "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"}}
JOB = r"""
import json, statistics, sys, time
sys.path.insert(0, {here!r})
import torch
torch.set_num_threads({threads})
from translation import build_edh, sources
from edh.ops.generation import generate
from edh.utils.perf import InferenceModel
import edh

def median_seconds(run, calls):
    run()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

model = build_edh().eval()
src, _ = sources(8, 32, 20)
greedy = median_seconds(lambda: generate(model, src, beam_size=1, max_new_tokens=64, min_new_tokens=64), 5)
net = InferenceModel(edh.build(encoder={{"name": "resnet18", "in_channels": 3}},
                               heads={{"label": {{"type": "classification", "num_classes": 10}}}}).eval())
images = torch.randn(8, 3, 224, 224)
with torch.inference_mode():
    forward = median_seconds(lambda: net(images), 5)
print(json.dumps({{"greedy_tokens_per_s": 8 * 64 / greedy, "forward_images_per_s": 8 / forward}}))
"""


def run_job(policy: str, threads: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    done = subprocess.run([sys.executable, "-c", JOB.format(here=str(HERE), threads=threads)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per policy (round-robin)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--policies", default="unset,PASSIVE,ACTIVE", help="comma-separated: unset, PASSIVE, ACTIVE")
    args = parser.parse_args()
    policies = args.policies.split(",")
    env = environment()
    print(f"{env['cpu']}, {args.threads} threads; {args.repeats} fresh processes per policy, round-robin; "
          f"other processes used {others_cores():.2f} cores at the start", flush=True)
    samples: dict[str, list[dict[str, float]]] = {p: [] for p in policies}
    for repeat in range(args.repeats):
        for policy in policies:
            samples[policy].append(run_job(policy, args.threads))
        print(f"repeat {repeat + 1}/{args.repeats} done; others {others_cores():.2f} cores", flush=True)
    rows = [{"policy": p, **{key: statistics.median(s[key] for s in samples[p]) for key in samples[p][0]}}
            for p in policies]
    print(format_table(rows, ["policy", "greedy_tokens_per_s", "forward_images_per_s"],
                       "\nmedians (greedy: tokens/s, batch 8, 64 new tokens; forward: ResNet-18 --fast images/s)"))
    base = rows[0]
    for row in rows[1:]:
        greedy = row["greedy_tokens_per_s"] / base["greedy_tokens_per_s"]
        forward = row["forward_images_per_s"] / base["forward_images_per_s"]
        print(f"{row['policy']} / {base['policy']}: greedy {greedy:.2f}x, forward {forward:.2f}x")
    print(f"\nwrote {write_json('wait_policy', {'environment': env, 'rows': rows, 'samples': samples})}")


if __name__ == "__main__":
    main()
