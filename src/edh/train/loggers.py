"""Experiment loggers of a run: the spec's ``logging:`` section (or ``trainer.logger``) as Lightning
loggers writing under the run folder, and the callback that sends them what ``self.log`` does not.

``csv`` (the default) is edh's own ``RUN/metrics.csv`` (`edh.train.callbacks.RunFolderWriter`) and
nothing more: no Lightning ``CSVLogger`` beside it, so no second copy of the same numbers.
``tensorboard``, ``mlflow`` and ``wandb`` add Lightning's ``TensorBoardLogger`` / ``MLFlowLogger`` /
``WandbLogger``. They get every metric and loss ``TrainTask`` logs (the same values metrics.csv
gets, plus the per-step training values), the learning rate of each optimizer group (``lr/encoder``,
``lr/heads`` ...: Lightning's ``LearningRateMonitor``), the run spec as hyperparameters (the loss
weights ``model.heads.NAME.weight`` among them) and, after each validation, the pictures
``edh predict --out`` draws for a few fixed validation images. See docs/logging.md.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from edh.core.errors import SpecError

LOGGER_NAMES = ("csv", "tensorboard", "mlflow", "wandb")
IMAGE_OPTION = "images"  # the one option every logger takes: how many validation images to draw (0: none)
DEFAULT_IMAGES = 4
LOGS_DIR = "logs"  # RUN/logs/<logger>

_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # logger -> module it imports


def logging_section(spec: Any) -> tuple[Any, str]:
    """The spec's logger choice and the key it came from (``logging`` or ``trainer.logger``); both
    set is a `SpecError`. None when neither is set."""
    chosen = getattr(spec, "logging", None)
    alias = spec.trainer.get("logger") if isinstance(spec.trainer, dict) else None
    if chosen is not None and alias is not None:
        raise SpecError("invalid spec: logging and trainer.logger both choose the experiment loggers; "
                        "keep one (logging: is the documented key)")
    if alias is not None:
        return alias, "trainer.logger"
    return chosen, "logging"


def parse_logging(value: Any, where: str = "logging") -> dict[str, dict[str, Any]]:
    """``value`` (a name, a list of names, or ``{name: options}``) as ``{name: options}``.

    None, ``true`` and ``[]`` are ``{"csv": {}}``; ``false`` too (edh's metrics.csv is always
    written). An unknown name is a `SpecError` naming ``where`` and the close matches."""
    if value is None or isinstance(value, bool):
        return {"csv": {}}
    if isinstance(value, str):
        items: dict[str, Any] = {value: {}}
    elif isinstance(value, (list, tuple)):
        items = {}
        for index, name in enumerate(value):
            if not isinstance(name, str):
                raise SpecError(f"invalid spec: {where}[{index}]: a logger name ({', '.join(LOGGER_NAMES)}); "
                                f"got {name!r}. Options go in the mapping form: {where}: {{tensorboard: {{}}}}")
            items[name] = {}
    elif isinstance(value, dict):
        items = dict(value)
    else:
        raise SpecError(f"invalid spec: {where}: a logger name, a list of names or {{name: options}} "
                        f"({', '.join(LOGGER_NAMES)}); got {value!r}")
    parsed: dict[str, dict[str, Any]] = {}
    for name, options in items.items():
        if name not in LOGGER_NAMES:
            close = difflib.get_close_matches(str(name), LOGGER_NAMES, n=2, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise SpecError(f"invalid spec: {where}.{name}: unknown logger; {hint}"
                            f"edh knows {', '.join(LOGGER_NAMES)}")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise SpecError(f"invalid spec: {where}.{name}: options are a mapping (e.g. {{images: 2}}); "
                            f"got {options!r}")
        images = options.get(IMAGE_OPTION, DEFAULT_IMAGES)
        if isinstance(images, bool) or not isinstance(images, int) or images < 0:
            raise SpecError(f"invalid spec: {where}.{name}.{IMAGE_OPTION}: a whole number >= 0 of validation "
                            f"images to draw each epoch (0: none); got {images!r}")
        parsed[name] = dict(options)
    return parsed or {"csv": {}}


def _require(name: str) -> None:
    """Import the package logger ``name`` needs; a `SpecError` naming the extra to install when missing."""
    import importlib

    module = _PACKAGES[name]
    try:
        importlib.import_module(module)
    except ImportError:
        raise SpecError(f"the {name} logger needs the {module} package, which is not installed; "
                        f"pip install 'edh[{name}]' (or 'edh[loggers]' for all of them), or remove {name} "
                        "from the spec's logging:") from None


def _options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != IMAGE_OPTION}


def make_loggers(spec: Any, run_dir: Path, run_name: str | None = None) -> list[Any]:
    """Lightning loggers for the spec's ``logging:`` (none for ``csv``: edh writes metrics.csv itself).

    Each writes under ``RUN/logs/``: ``tensorboard/``; ``mlflow/`` (a local file store, unless
    ``tracking_uri:``); ``wandb/`` (offline unless ``offline: false`` or ``WANDB_MODE`` is set).
    Other options are passed to the Lightning logger as they are."""
    value, where = logging_section(spec)
    chosen = parse_logging(value, where)
    name = run_name or Path(run_dir).resolve().name
    logs = Path(run_dir) / LOGS_DIR
    loggers: list[Any] = []
    for kind, options in chosen.items():
        if kind == "csv":
            continue
        _require(kind)
        extra = _options(options)
        try:
            loggers.append(_build(kind, extra, logs, name))
        except TypeError as error:
            raise SpecError(f"invalid spec: {where}.{kind}: {error}; see the options of "
                            f"lightning.pytorch.loggers for this logger") from None
    return loggers


def _build(kind: str, options: dict[str, Any], logs: Path, name: str) -> Any:
    from lightning.pytorch import loggers as pl_loggers

    if kind == "tensorboard":
        options = {"save_dir": str(logs), "name": "tensorboard", "version": "", "default_hp_metric": False,
                   **options}
        return pl_loggers.TensorBoardLogger(**options)
    if kind == "mlflow":
        if "tracking_uri" not in options:
            # mlflow-skinny has no sqlite store (that needs sqlalchemy); its file store is refused by
            # newer mlflow unless allowed: edh's default local store allows it (the user's setting wins)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            store = (logs / "mlflow").resolve()
            # mlflow caches its store per URI: after a start-over in this process the folder (and the
            # .trash the store made when it was created) must exist again
            (store / ".trash").mkdir(parents=True, exist_ok=True)
            options["tracking_uri"] = store.as_uri()
        options = {"experiment_name": name, **options}
        return pl_loggers.MLFlowLogger(**options)
    offline = os.environ.get("WANDB_MODE") not in ("online", "run")  # offline unless the user asked for online
    save_dir = logs / "wandb"
    save_dir.mkdir(parents=True, exist_ok=True)
    options = {"project": name, "save_dir": str(save_dir), "offline": offline, **options}
    return pl_loggers.WandbLogger(**options)


def image_count(spec: Any) -> int:
    """The most validation images any chosen logger draws (0 when only csv)."""
    value, where = logging_section(spec)
    chosen = parse_logging(value, where)
    return max([o.get(IMAGE_OPTION, DEFAULT_IMAGES) for k, o in chosen.items() if k != "csv"], default=0)


class LoggerExtras(L.Callback):
    """Sends the loggers what ``self.log`` does not: the run spec as hyperparameters at fit start,
    and after each validation, the prediction pictures of the first ``images`` validation inputs
    (the same fixed ones every epoch: the validation loader does not shuffle)."""

    def __init__(self, hyperparameters: dict[str, Any], images: int = DEFAULT_IMAGES) -> None:
        self.hyperparameters = hyperparameters
        self.images = images
        self._inputs: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(_flatten(self.hyperparameters))

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.images and self._inputs is None and batch_idx == 0 and not trainer.sanity_checking:
            from edh.train.task import unpack_batch

            inputs = unpack_batch(batch)[0]
            if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:  # pictures only
                self._inputs = inputs[:self.images].detach().cpu().clone()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._inputs is None or trainer.sanity_checking or not trainer.is_global_zero or not trainer.loggers:
            return
        with tempfile.TemporaryDirectory(prefix="edh-log-images-") as folder:
            for head, path in self._draw(pl_module, Path(folder)):
                for logger in trainer.loggers:
                    log_picture(logger, f"predictions/{head}/{path.stem}", path, trainer.global_step)

    def _draw(self, pl_module: L.LightningModule, folder: Path) -> list[tuple[str, Path]]:
        from edh.ops.tiling import predictions_of

        model = pl_module.model
        inputs = self._inputs.to(pl_module.device)
        files = [Path(f"val_{index}.png") for index in range(len(inputs))]
        training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                outputs = model(pl_module._prepare(inputs))
                drawn = []
                for name, head in model.tasks().items():
                    prediction = predictions_of(head, outputs[name], input_size=tuple(inputs.shape[-2:]),
                                                inputs=inputs)
                    out_dir = folder / name
                    out_dir.mkdir()
                    drawn += [(name, Path(p)) for p in head.write_predictions(prediction, inputs.cpu(), files, out_dir)]
        finally:
            model.train(training)
        return drawn


def log_picture(logger: Any, key: str, path: Path, step: int) -> None:
    """Log the PNG at ``path`` to one Lightning logger: tensorboard ``add_image``, mlflow
    ``log_artifact`` (under ``predictions/step_N/``), wandb ``log_image``."""
    from lightning.pytorch import loggers as pl_loggers

    if isinstance(logger, pl_loggers.TensorBoardLogger):
        import numpy as np
        from PIL import Image

        picture = np.asarray(Image.open(path).convert("RGB"))
        logger.experiment.add_image(key, picture, global_step=step, dataformats="HWC")
    elif isinstance(logger, pl_loggers.MLFlowLogger):
        folder = f"{key.rsplit('/', 1)[0]}/step_{step}"
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=folder)
    elif isinstance(logger, pl_loggers.WandbLogger):
        logger.log_image(key=key, images=[str(path)], step=step)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested spec -> ``{"model.heads.label.weight": 1.0, ...}`` (lists as their text), the form every
    logger's hyperparameter table takes."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    if isinstance(value, (list, tuple)) or value is None:
        value = str(value)
    return {prefix.rstrip("."): value}
