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
    """One example model: its run spec (a shipped config with ``overrides``) and ``weight``, its share of
    the demo's time budget: about the minutes it took on a 2-core AMD EPYC with AVX2, data and evaluation
    included, with the full short schedule (the captioner's is estimated: that run was stopped after 3.5)."""
    name: str
    title: str
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0


DEMOS = [  # short schedules: all of them train and evaluate in <= 10 minutes on the 2-core development machine
    Demo("classifier", "image classifier (ResNet-18) on digits", "digits-resnet18.yaml", weight=2.0),
    Demo("detector", "FCOS detector (ResNet-18 + FPN + FCOS head) on scenes", "detector-fcos-scenes.yaml",
         {"train.epochs": 8}, weight=3.7),
    Demo("segmenter", "segmenter (U-Net: ResNet-18 encoder + U-Net decoder + 1x1 conv head) on scenes",
         "unet-scenes.yaml", {"train.epochs": 6}, weight=5.7),
    Demo("autoencoder", "autoencoder (conv encoder + conv-transpose decoder, no head) on digits",
         "autoencoder-digits.yaml", {"train.epochs": 10}, weight=0.7),
    Demo("translator", "translator (Transformer encoder-decoder + LM head) on numbers, English -> French",
         "translator-numbers.yaml", {"train.epochs": 1}, weight=0.4),
    Demo("multitask", "multi-task U-Net on scenes: a mask head after the decoder + a class head after the encoder",
         "multitask-seg-cls-scenes.yaml", {"train.epochs": 4}, weight=3.9),
    Demo("captioner", "image to text (ResNet-18 encoder + Transformer decoder over its image cells + LM head) on "
         "scene-captions", "captioner-scenes.yaml", {"train.epochs": 6, "data.num_train": 4000}, weight=5.0),
]
SECONDS_AFTER_TRAINING = 20.0  # per model: test evaluation, pictures, its part of the report
REPORT_SECONDS = 20.0  # once: the report, and what the command did before its clock started
MIN_TRAINING_SECONDS = 20.0  # however late: each model still trains a little and is tested


def training_cap(remaining_seconds: float, weights: list[float]) -> float:
    """Seconds of training the first of the models still to run (``weights``, it first) may take so that
    all of them end within ``remaining_seconds``: its weight's share of what is left once each model's
    evaluation (``SECONDS_AFTER_TRAINING``) and the report (``REPORT_SECONDS``) are set aside, at least
    ``MIN_TRAINING_SECONDS``. Models that finish early leave their time to the later ones; on a machine
    fast enough for every full schedule no cap binds. (On a 2-core AMD EPYC with AVX2 the seven short
    schedules need over 20 minutes: capped, the whole demo took 605 s before the report reserve.)"""
    spare = remaining_seconds - SECONDS_AFTER_TRAINING * len(weights) - REPORT_SECONDS
    return max(MIN_TRAINING_SECONDS, spare * weights[0] / sum(weights))


def _epochs_trained(run_dir: Path) -> int:
    """Whole epochs the run folder's ``metrics.csv`` records (one row per validated epoch)."""
    import csv

    from edh.workflows.run import METRICS_FILE

    try:
        rows = list(csv.DictReader((run_dir / METRICS_FILE).open()))
    except (OSError, csv.Error):
        return 0
    return max((int(row["epoch"]) + 1 for row in rows if row.get("epoch", "").isdigit()), default=0)


def config_path(name: str) -> Path:
    return Path(str(resources.files("edh") / "configs" / name))


@dataclass
class Figure:
    """Pictures the report shows side by side above one ``caption`` that says, in words, what they show."""
    caption: str
    paths: list[Path]


@dataclass
class DemoResult:
    demo: Demo
    run_dir: Path
    seconds: float
    metrics: dict[str, dict[str, float]]
    table: str
    description: Any = None
    diagram: Path | None = None
    pictures: list[Figure] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    note: str | None = None  # said beside the time: a schedule cut short by the demo's time budget


def example_pictures(run, out_dir: Path, count: int = 8, shown: int = 4) -> list[Figure]:
    """Pictures of the model's predictions on the first ``count`` test samples (each task draws its
    own), per head at most ``shown`` files, each head's under a caption of what they show."""
    import torch
    from torch.utils.data import default_collate

    from edh.data.base import build_data
    from edh.ops.generation import generates
    from edh.train.batch import unpack_batch
    from edh.workflows.inputs import reader_for

    if not reader_for(run).pictures:
        return []
    bundle = build_data(run.spec.data.name, run.spec.data.options(), run.spec.data.seed)
    items = [bundle.test[i] for i in range(min(count, len(bundle.test)))]
    inputs, _, context = unpack_batch((bundle.collate_fn or default_collate)(items))
    if generates(run.model):  # images in, text out: the images with the text generated for them
        from edh.utils.plots import image_rows_png
        from edh.workflows.translate import Translator

        translator = Translator(run)
        texts = translator.tokenizer.decode_batch(translator.generate_ids(inputs))
        rows = [(f"test image {i}: {text}", inputs[i:i + 1]) for i, text in enumerate(texts)]
        path = image_rows_png(rows, run.info.mean, run.info.std, out_dir / "captions.png", columns=1)
        return [Figure(f"Text generated for {len(texts)} test images", [path])]
    with torch.inference_mode():
        outputs = run.model.eval()(inputs, **context)
    figures: list[Figure] = []
    paths = [out_dir / f"example_{i}.png" for i in range(len(items))]
    for name, head in run.model.tasks().items():
        prediction = head.predict(outputs[name], input_size=tuple(inputs.shape[-2:]), inputs=inputs)
        written = head.write_predictions(prediction, inputs, paths, out_dir / "examples" / name)
        images = len(items) if len(written) < len(items) else min(shown, len(written))  # a grid of all, or one each
        if written:
            figures.append(Figure(prediction_caption(name, head, images), written[:shown]))
    return figures


def prediction_caption(name: str, head, images: int) -> str:
    """What the pictures of head ``name``'s predictions on ``images`` test images show, in words
    (`Head.picture_description`)."""
    caption = f"Predictions of head '{name}' on {images} test images"
    shows = head.picture_description()
    return f"{caption} ({shows})" if shows else caption


def run_figures(run_dir: Path) -> list[Figure]:
    """The run folder's confusion matrix and training curves, where written, captioned."""
    import csv

    from edh.workflows.run import CURVES_FILE, METRICS_FILE

    figures = []
    if (run_dir / "confusion_matrix.png").is_file():
        figures.append(Figure("Confusion matrix on the test split (rows: true class, columns: predicted; "
                              "colour: share of the row)", [run_dir / "confusion_matrix.png"]))
    if (run_dir / CURVES_FILE).is_file():
        metrics = run_dir / METRICS_FILE
        rows = csv.DictReader(metrics.read_text().splitlines()) if metrics.is_file() else []
        when = "after the one epoch trained" if len({row["epoch"] for row in rows}) == 1 else "per epoch"
        figures.append(Figure(f"Training curves: loss and validation metrics {when}", [run_dir / CURVES_FILE]))
    return figures


def load_config(name: str, overrides: dict[str, Any] | None = None):
    """The shipped config ``name`` as a `RunSpec`, with dotted-key ``overrides`` applied first
    (``{"train.epochs": 2}``; a value of None removes the key: ``{"model.heads.label": None}``)."""
    from edh.core.spec import parse_run_spec
    from edh.core.spec_yaml import read_yaml

    data = read_yaml(config_path(name))
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return parse_run_spec(data, name)


def run_demo(demo: Demo, out_root: Path, quick: bool = False,
             max_train_seconds: float | None = None) -> DemoResult:
    """Train and test ``demo`` into ``out_root/<name>``; ``max_train_seconds`` stops its training early
    (Lightning ``max_time``; the report says so when it did)."""
    from edh.workflows.evaluate import evaluate_run
    from edh.train.runner import train_run

    spec = load_config(demo.config, {**demo.overrides, **({"train.epochs": 1} if quick else {})})
    run_dir = out_root / demo.name
    start = time.perf_counter()
    # quick: one epoch of 3 steps, then a short validation (metrics.csv and curves.png get their one row)
    extra: dict[str, Any] = {"limit_train_batches": 3, "limit_val_batches": 2, "limit_test_batches": 2,
                             "check_val_every_n_epoch": 1} if quick else {}
    if max_train_seconds is not None and not quick:
        extra["max_time"] = {"seconds": max_train_seconds}
    run = train_run(spec, run_dir, force=True, **extra)  # the demo trains its examples anew each time
    seconds = time.perf_counter() - start
    trained = _epochs_trained(run_dir)
    note = None
    if "max_time" in extra and seconds >= max_train_seconds and trained < spec.train.epochs:
        note = (f"training stopped at its {max_train_seconds:.0f} s share of the demo's time budget, before its "
                f"{spec.train.epochs}-epoch schedule ended ({trained} epochs validated; edh demo --minutes 0: "
                "full schedules)")
    evaluation = evaluate_run(run, "test", run_dir, progress=False)
    size = tuple(run.info.image_size) if run.info.image_size else None
    description = run.model.describe(size)
    from edh.inspection.diagram import draw

    diagram = draw(run.model, description, run_dir / "diagram.png", title=demo.title)
    tabled = {name for name, values in evaluation.metrics.items() if any("/" in key for key in values)}
    lines = [line for name, head_lines in evaluation.reports.items() if name not in tabled  # the report tables those
             for line in head_lines if not line.startswith("confusion matrix:")][:12]
    pictures = example_pictures(run, run_dir) + run_figures(run_dir)
    return DemoResult(demo, run_dir, seconds, evaluation.metrics, description.render(demo.title), description,
                      diagram, pictures, lines, note)
