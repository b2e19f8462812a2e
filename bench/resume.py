"""An uninterrupted run vs the same run SIGKILLed mid-epoch and resumed with ``edh train --resume``.

Run: ``python bench/resume.py [--spec RUN.yaml] [--kills N] [--seed S] [--out FOLDER] [--devices N]``.

Both runs use ``train.deterministic: true``. The default spec is a small conv classifier on the
digits with random augmentation and dropout (so the checkpointed RNG states and the per-sample
augmentation seeds matter), checkpointing every 5 optimizer steps. The interrupted run is killed
``--kills`` times, each at a random moment after a new checkpoint appeared, and resumed each time.
Prints each run's final validation metrics, the test metrics from ``edh eval``, and the largest
weight difference; results also go to ``bench/results/resume.json``.

``--devices N`` (N > 1) trains both runs with DDP over N CPU processes (``data.batch_size`` divided by
N): a run resumed mid-epoch continues the sharded epoch where it stopped. Each run is started in its
own process group and the whole group is killed, so no DDP process outlives its launcher.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from common import environment, write_json

EDH = [sys.executable, "-m", "edh.cli"]
DEFAULT_SPEC = {
    "model": {"encoder": {"name": "conv", "channels": [16, 32]},
              "heads": {"label": {"type": "classification", "dropout": 0.3}}},
    "data": {"name": "digits", "image_size": 16, "batch_size": 64, "augment": "light"},
    "train": {"epochs": 4, "lr": 0.01, "seed": 0, "deterministic": True, "checkpoint_every_n_steps": 5},
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
}


def final_metrics(run_dir: Path) -> dict[str, float]:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


def test_metrics(run_dir: Path) -> dict[str, float]:
    out = subprocess.run([*EDH, "eval", str(run_dir), "--json"], check=True, capture_output=True, text=True).stdout
    return {f"{head}/{k}": v for head, values in json.loads(out)["metrics"].items() for k, v in values.items()}


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", help="a run spec YAML (default: a small digits classifier, see the docstring)")
    parser.add_argument("--kills", type=int, default=2, help="how many times the second run is killed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    parser.add_argument("--out", help="keep the two run folders here (default: a temporary folder)")
    parser.add_argument("--devices", type=int, default=1, help="DDP over this many CPU processes (default 1)")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.spec).read_text()) if args.spec else DEFAULT_SPEC
    spec.setdefault("train", {})["deterministic"] = True
    if args.devices > 1:
        spec.setdefault("trainer", {}).update(accelerator="cpu", devices=args.devices, strategy="ddp")
        spec["data"]["batch_size"] = max(1, spec["data"].get("batch_size", 64) // args.devices)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        root.mkdir(parents=True, exist_ok=True)
        spec_file = root / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(spec))
        full, cut = root / "uninterrupted", root / "interrupted"
        start = time.time()
        subprocess.run([*EDH, "train", str(spec_file), "--out", str(full), "--force"], check=True, capture_output=True)
        seconds = time.time() - start
        kills = []
        command = [*EDH, "train", str(spec_file), "--out", str(cut), "--force"]
        for _ in range(args.kills):
            seen = checkpoint_step(cut / "last.ckpt") if (cut / "last.ckpt").exists() else -1
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)  # its own group: DDP processes die with it
            deadline = time.time() + 600
            while time.time() < deadline and process.poll() is None:
                if (cut / "last.ckpt").exists() and checkpoint_step(cut / "last.ckpt") > seen:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, seconds / 4))
            if process.poll() is not None:
                print("the run finished before it was killed; use a longer spec or fewer --kills")
                break
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            time.sleep(0.5)  # the group's other processes (DDP) end too; the folder's lock goes with them
            kills.append(checkpoint_step(cut / "last.ckpt"))
            command = [*EDH, "train", "--resume", str(cut)]
        subprocess.run(command, check=True, capture_output=True)
        from safetensors.torch import load_file

        a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
        weight_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        result = {"uninterrupted": {"val": final_metrics(full), "test": test_metrics(full)},
                  "interrupted": {"val": final_metrics(cut), "test": test_metrics(cut),
                                  "resumed_from_steps": kills},
                  "max_weight_diff": weight_diff, "spec": spec, "environment": environment()}
    for name in ("uninterrupted", "interrupted"):
        metrics = {**result[name]["val"], **{f"test/{k}": v for k, v in result[name]["test"].items()}}
        print(f"{name:<14} " + "  ".join(f"{k}={v:.6f}" for k, v in sorted(metrics.items())))
    print(f"interrupted run killed after checkpoints at steps {kills} and resumed each time")
    same = weight_diff == 0 and result["uninterrupted"]["test"] == result["interrupted"]["test"]
    print(f"max abs weight difference: {weight_diff:.3g}  ({'identical' if same else 'DIFFERENT'})")
    print(f"results: {write_json('resume', result)}")


if __name__ == "__main__":
    main()
