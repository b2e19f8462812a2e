"""Experiment loggers (docs/logging.md): the spec's ``logging:`` / ``trainer.logger`` as Lightning
loggers under the run folder, read back with each tool's own reader."""

from __future__ import annotations

import csv
import sys

import pytest

from conftest import tiny_run_spec
from edh.core.errors import SpecError
from edh.core.spec import parse_run_spec
from edh.train.loggers import parse_logging
from edh.train.runner import train_run


def _train(tmp_path, logging=None, trainer=None, epochs=1):
    data = tiny_run_spec(epochs=epochs)
    if logging is not None:
        data["logging"] = logging
    data["trainer"].update(trainer or {})
    run_dir = tmp_path / "run"
    train_run(parse_run_spec(data), run_dir)
    return run_dir


def _csv_rows(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_csv_default_writes_only_metrics_csv(tmp_path):
    run_dir = _train(tmp_path)
    rows = _csv_rows(run_dir)
    assert len(rows) == 1 and "val/label/acc" in rows[0]
    assert not (run_dir / "logs").exists()


def test_tensorboard_gets_metrics_losses_lr_and_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _train(tmp_path, trainer={"logger": "tensorboard"})  # trainer.logger is the same as logging:
    events = EventAccumulator(str(run_dir / "logs" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val/label/acc", "val/loss", "train/loss"} <= scalars
    assert any(tag.startswith("lr-") and tag.endswith("/encoder") for tag in scalars), scalars
    assert any(tag.startswith("lr-") and tag.endswith("/heads.label") for tag in scalars), scalars
    logged = events.Scalars("val/label/acc")[-1].value
    assert logged == pytest.approx(float(_csv_rows(run_dir)[-1]["val/label/acc"]), abs=1e-5)
    assert any(tag.startswith("predictions/label/") for tag in events.Tags()["images"])


def test_mlflow_local_store_and_tensorboard_together(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = _train(tmp_path, logging={"tensorboard": {"images": 0}, "mlflow": {"images": 2}})
    client = MlflowClient(tracking_uri=(run_dir / "logs" / "mlflow").resolve().as_uri())
    experiment = client.get_experiment_by_name("run")
    (run,) = client.search_runs([experiment.experiment_id])
    assert "val/label/acc" in run.data.metrics and "train/loss" in run.data.metrics
    assert run.data.params["model.heads.label.weight"] == "1.0"
    folders = [entry.path for entry in client.list_artifacts(run.info.run_id, "predictions/label")]
    pictures = [entry.path for folder in folders for entry in client.list_artifacts(run.info.run_id, folder)]
    assert pictures and all(path.endswith(".png") for path in pictures)
    assert (run_dir / "logs" / "tensorboard").is_dir()


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = _train(tmp_path, logging=["wandb"])
    assert list((run_dir / "logs" / "wandb").rglob("*.wandb")), "no offline wandb run written"


def test_forms_and_unknown_name():
    assert parse_logging(None) == {"csv": {}}
    assert parse_logging(["tensorboard", "mlflow"]) == {"tensorboard": {}, "mlflow": {}}
    with pytest.raises(SpecError, match=r"logging\.tensorbord: unknown logger; did you mean tensorboard"):
        parse_logging("tensorbord")
    with pytest.raises(SpecError, match=r"logging\.mlflow\.images"):
        parse_logging({"mlflow": {"images": -1}})


def test_unknown_name_refused_before_training(tmp_path):
    with pytest.raises(SpecError, match=r"trainer\.logger\.wandbb"):
        _train(tmp_path, trainer={"logger": ["wandbb"]})
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_missing_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    with pytest.raises(SpecError, match=r"pip install 'edh\[mlflow\]'"):
        _train(tmp_path, logging="mlflow")
    assert not (tmp_path / "run" / "metrics.csv").exists()
