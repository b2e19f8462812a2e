"""``edh demo``: train and evaluate the article's example models on built-in data, one after another.

Each `Demo` names a config shipped in ``edh/configs`` and the short schedule the demo uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass
class Demo:
    name: str
    title: str
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)


DEMOS = [
    Demo("classifier", "image classifier (ResNet-18) on digits", "digits-resnet18.yaml"),
]


def config_path(name: str) -> Path:
    return Path(str(resources.files("edh") / "configs" / name))


@dataclass
class DemoResult:
    demo: Demo
    run_dir: Path
    seconds: float
    metrics: dict[str, dict[str, float]]
    table: str


def run_demo(demo: Demo, out_root: Path, quick: bool = False) -> DemoResult:
    from edh.evaluate import evaluate_run
    from edh.spec import parse_run_spec, read_yaml
    from edh.train.runner import train_run

    data = read_yaml(config_path(demo.config))
    for dotted, value in demo.overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    if quick:
        data.setdefault("train", {})["epochs"] = 1
    spec = parse_run_spec(data, demo.config)
    run_dir = out_root / demo.name
    start = time.perf_counter()
    extra = {"max_steps": 3, "limit_val_batches": 2, "limit_test_batches": 2} if quick else {}
    run = train_run(spec, run_dir, **extra)
    seconds = time.perf_counter() - start
    evaluation = evaluate_run(run, "test", run_dir, progress=False)
    size = tuple(run.info.image_size) if run.info.image_size else None
    table = run.model.describe(size).render(demo.title)
    return DemoResult(demo, run_dir, seconds, evaluation.metrics, table)
