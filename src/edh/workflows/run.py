"""A run folder: everything needed to rebuild, evaluate and predict with a trained model.

Files: ``spec.yaml`` (the resolved run spec), ``data.json`` (the data's `DataInfo`),
``model.safetensors`` (weights), ``metrics.csv`` and ``curves.png`` (training history),
``last.ckpt`` (resumable training state, weights-only loadable). Every write is atomic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edh.data.base import DataInfo
from edh.utils.io import WeightsFileError, atomic_write_text, load_tensors, save_tensors
from edh.core.spec import RunSpec, parse_run_spec, read_yaml, to_yaml
from edh.core.errors import RunFolderError, SpecError
from edh.version import __version__

SPEC_FILE, DATA_FILE, WEIGHTS_FILE, METRICS_FILE, CURVES_FILE, CKPT_FILE = (
    "spec.yaml", "data.json", "model.safetensors", "metrics.csv", "curves.png", "last.ckpt")


def write_spec(run_dir: Path, spec: RunSpec, info: DataInfo) -> None:
    atomic_write_text(run_dir / SPEC_FILE, to_yaml(spec))
    atomic_write_text(run_dir / DATA_FILE, json.dumps(info.to_dict(), indent=2))


def save_weights(run_dir: Path, model: torch.nn.Module) -> Path:
    return save_tensors(run_dir / WEIGHTS_FILE, model.state_dict(), metadata={"edh_version": __version__})


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model``; every missing, unexpected or mis-shaped tensor is named."""
    state = load_tensors(path)
    own = model.state_dict()
    mismatched = [f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        parts = []
        if mismatched:
            parts.append("shapes differ: " + ", ".join(mismatched[:10]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:10]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:10]))
        raise WeightsFileError(f"weights in {path} do not match the spec's model: " + "; ".join(parts)
                               + ". Was the spec edited after training?")
    model.load_state_dict(state)


@dataclass
class Run:
    """A loaded run: the model (eval mode, weights loaded), its spec and its data info."""

    path: Path
    model: Any
    spec: RunSpec
    info: DataInfo


def check_run_folder(path: str | Path, need: tuple[str, ...] = (SPEC_FILE, DATA_FILE, WEIGHTS_FILE)) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder {path} does not exist (make one with `edh train RUN.yaml`)")
    missing = [name for name in need if not (path / name).is_file()]
    if missing:
        raise RunFolderError(
            f"run folder {path} is missing {', '.join(missing)}; it needs {', '.join(need)}. Was training "
            f"stopped before the first validation? Resume it with `edh train --resume {path}`."
        )
    return path


def read_run_spec(path: str | Path) -> tuple[RunSpec, DataInfo]:
    path = check_run_folder(path, (SPEC_FILE, DATA_FILE))
    spec = parse_run_spec(read_yaml(path / SPEC_FILE), str(path / SPEC_FILE))
    try:
        info = DataInfo.from_dict(json.loads((path / DATA_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise SpecError(f"{path / DATA_FILE} is not a valid data info file: {error}") from None
    return spec, info


def load_run(path: str | Path) -> Run:
    """Rebuild a run's model from its folder alone (spec + safetensors), in eval mode."""
    from edh.core.model import Model

    path = check_run_folder(path)
    spec, info = read_run_spec(path)
    model = Model(spec.model, pretrained=False).bind_data(info)
    load_weights(model, path / WEIGHTS_FILE)
    return Run(path, model.eval(), spec, info)
