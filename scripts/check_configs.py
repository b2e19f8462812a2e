"""Train every shipped run config for two steps and evaluate image models on the test split (model-only
specs are built): a smoke check that each still builds, trains, saves, loads and evaluates (not a
measure of quality).

Usage: python scripts/check_configs.py [--only NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path


def check(name: str, out: Path) -> str:
    import edh
    from edh.core.spec import RunSpec, load_spec
    from edh.train.runner import train_run
    from edh.workflows.demo import config_path, load_config
    from edh.workflows.evaluate import evaluate_run

    if not isinstance(load_spec(config_path(name)), RunSpec):  # a model spec (edh describe): build it only
        model = edh.build(load_spec(config_path(name)), pretrained=False)
        return f"model spec: builds, {sum(p.numel() for p in model.parameters()):,} parameters"
    spec = load_config(name, {"train.epochs": 1})
    run = train_run(spec, out / name.removesuffix(".yaml"), force=True, max_steps=2, limit_val_batches=1, limit_train_batches=2,
                    enable_progress_bar=False)
    evaluation = evaluate_run(run, "test", batch_size=4, progress=False) if run.info.input_kind == "image" else None
    metrics = {task: sorted(values) for task, values in (evaluation.metrics if evaluation else {}).items()}
    return f"tasks {sorted(run.model.tasks())}, test metrics {metrics or '(text: see edh eval)'}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="config file names (default: all in edh/configs)")
    parser.add_argument("--out", help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    from edh.workflows.demo import config_path

    names = args.only or sorted(p.name for p in config_path("any.yaml").parent.glob("*.yaml"))
    out = Path(args.out or tempfile.mkdtemp(prefix="edh-configs-"))
    failed = 0
    for name in names:
        start = time.perf_counter()
        try:
            line = check(name, out)
            print(f"ok      {name:<40} {time.perf_counter() - start:6.1f} s  {line}", flush=True)
        except Exception as error:  # noqa: BLE001 - report every config, then fail
            failed += 1
            print(f"FAILED  {name:<40} {type(error).__name__}: {error}", flush=True)
            traceback.print_exc()
    print(f"{len(names) - failed} of {len(names)} configs train, load and evaluate")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
