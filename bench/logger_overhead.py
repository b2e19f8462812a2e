"""Logger overhead: wall time of the README's digits training (``configs/digits-resnet18.yaml``, 12
epochs, about 30 s) with ``logging: csv`` (edh's metrics.csv only) vs ``logging: [tensorboard, mlflow]``
(4 prediction pictures per validation). Target: within 5%.

Run: ``python bench/logger_overhead.py [--epochs N] [--repeats 3]`` (``--tiny``: the 8x8 conv run of a
few seconds instead, where the loggers' start-up dominates). Contenders alternate round-robin
(bench/common.py `measure`); each score is the median of its quiet samples, and the table says when
other processes were busy. Results also go to ``bench/results/logger_overhead.json``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (Contender, base_parser, environment, format_ratio, measure, noisy_warning,  # noqa: E402
                    print_table, ratio, summarize, write_json)


def digits_spec(epochs: int, logging: object) -> dict:
    return {
        "model": {"encoder": {"name": "conv", "channels": [8, 16]}, "heads": {"label": {"type": "classification"}}},
        "data": {"name": "digits", "image_size": None, "batch_size": 64, "augment": "none"},
        "train": {"epochs": epochs, "lr": 0.01, "seed": 0},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "logging": logging,
    }


def trainer_of(epochs: int | None, logging: object, root: Path, tiny: bool):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run
    from edh.workflows.demo import load_config

    def step() -> None:
        run_dir = root / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        if tiny:
            spec = parse_run_spec(digits_spec(epochs or 3, logging))
        else:
            spec = load_config("digits-resnet18.yaml", {"logging": logging, "trainer.enable_progress_bar": False,
                                                        **({"train.epochs": epochs} if epochs else {})})
        train_run(spec, run_dir)
    return step


def main() -> None:
    parser = base_parser(__doc__, repeats=3)
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the config's 12; --tiny: 3)")
    parser.add_argument("--tiny", action="store_true", help="the 8x8 conv run instead of digits-resnet18")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edh-logger-bench-") as folder:
        root = Path(folder)
        contenders = [Contender(name, trainer_of(args.epochs, logging, root / name.replace("+", "_"), args.tiny), items=1,
                                info={"logging": str(logging)})
                      for name, logging in (("csv", "csv"), ("tensorboard+mlflow", ["tensorboard", "mlflow"]))]
        samples = measure(contenders, repeats=args.repeats, warmup=1)
        rows = summarize(contenders, samples)
    for row in rows:
        row["seconds"] = round(1.0 / row["items_per_s"], 3)  # one item: one whole training
    print_table(rows, ["name", "seconds", "quiet_samples", "noisy"],
                title=f"digits ({'8x8 conv' if args.tiny else 'digits-resnet18.yaml'}), "
                      f"{args.epochs or ('3' if args.tiny else 'the config')} epochs: seconds per training (median)")
    warning = noisy_warning(rows)
    print(warning or "machine was quiet during all samples")
    seconds = {row["name"]: 1.0 / row["items_per_s"] for row in rows}
    overhead = ratio("csv / tensorboard+mlflow wall time (1 = no overhead)",
                     seconds["csv"] / seconds["tensorboard+mlflow"], target=1 / 1.05)
    print(format_ratio(overhead))
    write_json("logger_overhead", {"environment": environment(), "rows": rows, "overhead": overhead,
                                   "noisy": warning})


if __name__ == "__main__":
    main()
