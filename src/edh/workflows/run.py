"""A run folder: everything needed to rebuild, evaluate and predict with a trained model.

Files: ``spec.yaml`` (the resolved run spec), ``data.json`` (the data's `DataInfo`),
``model.safetensors`` (weights), ``metrics.csv`` and ``curves.png`` (training history),
``last.ckpt`` (resumable training state, weights-only loadable). Every write is atomic.

Beside them: ``.edh.lock`` (the lock a writing process holds, `edh.utils.io.FolderLock`) and, while
a ``--force`` start has not yet written its first checkpoint, ``.previous/`` (the run it replaces,
moved aside: `stage_previous`, `commit_start_over`, `restore_previous`). The policy a command follows
for a folder that holds a run (`holds_run`, `refuse_start_over`) and for resuming with another spec
(`resume_differences`, `RESUME_MAY_CHANGE`) lives here too.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edh.data.base import DataInfo
from edh.utils.io import LOCK_FILE, WeightsFileError, atomic_write_text, load_tensors, save_tensors
from edh.core.spec import RunSpec, parse_run_spec, to_dict, to_yaml
from edh.core.spec_yaml import read_yaml
from edh.core.errors import ResumeMismatchError, RunExistsError, RunFolderError, SpecError
from edh.version import __version__

SPEC_FILE, DATA_FILE, WEIGHTS_FILE, METRICS_FILE, CURVES_FILE, CKPT_FILE = (
    "spec.yaml", "data.json", "model.safetensors", "metrics.csv", "curves.png", "last.ckpt")
PREVIOUS_DIR = ".previous"  # a --force start's predecessor, until the new run's first checkpoint
DISCARD_DIR = ".previous.delete"  # .previous once the new run has a checkpoint (renamed: the commit point)
PARTIAL_DIR = ".previous.partial"  # .previous while the old run's files are moved into it
MANIFEST = ".names.json"  # in .previous: the names of the old run's files
# The files edh writes into a run folder (training, edh eval, edh export, edh demo): what a --force start
# moves aside and what starting over replaces. Any other file in the folder is left alone.
RUN_FILE_PATTERNS = (SPEC_FILE, DATA_FILE, WEIGHTS_FILE, METRICS_FILE, CURVES_FILE, "*.ckpt", "tokenizer.json",
                     "confusion_matrix.png", "diagram.png", "example_*.png", "examples", "*.onnx")
# What `edh train [SPEC] --resume RUN` may change: how long and where it trains, not what it trains.
RESUME_MAY_CHANGE = ("train.epochs", "train.checkpoint_every_n_steps", "train.compile", "train.threads",
                     "data.num_workers",
                     "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                     "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps")

log = logging.getLogger("edh")


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
        if (path / PREVIOUS_DIR).is_dir():
            raise RunFolderError(
                f"run folder {path} is missing {', '.join(missing)}: a `--force` start replacing its run was "
                f"stopped before its first checkpoint, and the run it replaces waits in {path / PREVIOUS_DIR}. "
                f"`edh train --resume {path}` puts that run back and resumes it; `edh train SPEC --out {path} "
                "--force` starts over again."
            )
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


# ---- a folder that holds a run ------------------------------------------------------------------------
def run_files(path: str | Path) -> list[Path]:
    """The files (and folders) of ``path`` that edh wrote there as a run (`RUN_FILE_PATTERNS`)."""
    path = Path(path)
    found: dict[str, Path] = {}
    for pattern in RUN_FILE_PATTERNS:
        for item in path.glob(pattern):
            found.setdefault(item.name, item)
    return [found[name] for name in sorted(found)]


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` holds a run worth keeping: weights, a checkpoint or a training history."""
    path = Path(path)
    return path.is_dir() and ((path / WEIGHTS_FILE).is_file() or (path / METRICS_FILE).is_file()
                              or any(path.glob("*.ckpt")))


def describe_run(path: str | Path) -> str:
    """What a run folder holds, in a few words: its files, epochs trained and last validation loss."""
    path = Path(path)
    names = [p.name for p in run_files(path) if p.name in (WEIGHTS_FILE, CKPT_FILE, METRICS_FILE)
             or p.suffix == ".ckpt"]
    text = ", ".join(dict.fromkeys(names))
    try:
        rows = list(csv.DictReader((path / METRICS_FILE).open()))
    except (OSError, csv.Error):
        rows = []
    if rows:
        last = rows[-1]
        text += f"; {len(rows)} validated epoch{'s' if len(rows) != 1 else ''}, the last at step {last.get('step')}"
        if last.get("val/loss"):
            text += f" with val/loss {last['val/loss']}"
    return text


def refuse_start_over(path: str | Path) -> None:
    """A `RunExistsError` if ``path`` holds a run: what is there and the three ways on."""
    path = Path(path)
    if not holds_run(path):
        return
    resumable = (path / CKPT_FILE).is_file()
    ways = (f"Continue it with `edh train --resume {path}`; " if resumable else
            f"It has no {CKPT_FILE}, so it cannot be resumed: ")
    raise RunExistsError(
        f"{path} already holds a run ({describe_run(path)}) and nothing in it was changed. {ways}"
        f"replace it with --force (the old run is kept in {path / PREVIOUS_DIR} until the new one has written "
        "its first checkpoint, then deleted); or train into another folder with --out NEW_FOLDER."
    )


def _fsync_folder(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def stage_previous(path: str | Path) -> Path | None:
    """Move the run in ``path`` (its `run_files`) into ``path/.previous``, renamed file by file (nothing
    is copied or deleted); `commit_start_over` deletes them once the new run has a checkpoint,
    `restore_previous` puts them back if it never gets one. Returns the folder, or None if nothing moved.

    The files go to ``.previous.partial`` first, with a list of their names, and that folder is renamed
    ``.previous`` when all are there: a process killed half-way leaves a ``.partial`` folder whose files
    `recover_interrupted_start` simply moves back."""
    path = Path(path)
    files = run_files(path)
    if not files:
        return None
    partial, previous = path / PARTIAL_DIR, path / PREVIOUS_DIR
    partial.mkdir()
    (partial / MANIFEST).write_text(json.dumps(sorted(item.name for item in files)))
    for item in files:
        os.rename(item, partial / item.name)
    _fsync_folder(partial)
    os.rename(partial, previous)
    _fsync_folder(path)
    log.info("--force: the run in %s is kept in %s until the new run's first checkpoint", path, previous)
    return previous


def commit_start_over(path: str | Path) -> bool:
    """The new run in ``path`` has a complete checkpoint: delete the run it replaced (``.previous``).
    Renaming ``.previous`` to ``.previous.delete`` is the commit point: a process killed after it
    leaves a folder whose next writer just finishes the deletion."""
    path = Path(path)
    previous, discard = path / PREVIOUS_DIR, path / DISCARD_DIR
    if previous.is_dir():
        if discard.exists():
            shutil.rmtree(discard, ignore_errors=True)
        os.rename(previous, discard)
        _fsync_folder(path)
    if discard.exists():
        shutil.rmtree(discard, ignore_errors=True)
        return True
    return False


def _move_back(folder: Path, path: Path) -> None:
    """Move the old run's files from ``folder`` back into ``path`` (replacing the new run's of the same
    name); idempotent: a file already moved back is no longer in ``folder``."""
    names = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else \
        [item.name for item in folder.iterdir()]
    for name in names:
        source, target = folder / name, path / name
        if not source.exists() and not source.is_symlink():
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(source, target)
    (folder / MANIFEST).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something edh did not put there: leave it to the user
        log.warning("%s holds files that were not part of the run; they are left there", folder)
    _fsync_folder(path)


def restore_previous(path: str | Path, also: tuple[str, ...] = ()) -> bool:
    """Undo a ``--force`` start that has no checkpoint: delete what it wrote that the old run did not
    have (its `run_files` and the names in ``also``) and move the old run back from ``.previous``,
    each file over the new run's of the same name. Returns whether there was one to undo."""
    path = Path(path)
    previous = path / PREVIOUS_DIR
    if not previous.is_dir():
        return False
    manifest = previous / MANIFEST
    old = set(json.loads(manifest.read_text())) if manifest.is_file() else {p.name for p in previous.iterdir()}
    for item in [*run_files(path), *(path / name for name in also)]:
        if item.name in old:
            continue  # replaced below (os.replace): there is never a moment without it
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        elif item.exists() or item.is_symlink():
            item.unlink()
    _move_back(previous, path)
    return True


def recover_interrupted_start(path: str | Path) -> str | None:
    """Finish what a process killed in the middle of a ``--force`` start left: a committed start's
    leftover (``.previous.delete``) is deleted; an uncommitted one (``.previous``: the new run never
    wrote a checkpoint) is undone, the old run put back; a half-staged one (``.previous.partial``: the
    new run had not started) moved back. Returns a line saying what was done, or None."""
    path = Path(path)
    if (path / DISCARD_DIR).exists():
        commit_start_over(path)
    if (path / PARTIAL_DIR).is_dir():
        _move_back(path / PARTIAL_DIR, path)
        line = f"{path}: a --force start was stopped while it moved the old run aside; the run is back as it was"
    elif restore_previous(path):
        line = (f"{path}: a --force start was stopped before its first checkpoint; the run it was replacing "
                f"is back from {path / PREVIOUS_DIR}")
    else:
        return None
    log.warning("%s", line)
    return line


def write_problem(path: str | Path) -> str | None:
    """Why this process cannot create files in the folder ``path`` (None if it can)."""
    path = Path(path)
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is read-only for this user"
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def check_writable(path: str | Path, resume: bool) -> None:
    """A `RunFolderError` if the run folder ``path`` cannot be written, with the ways on."""
    path = Path(path)
    problem = write_problem(path)
    if problem is None:
        return
    if resume:
        raise RunFolderError(
            f"cannot resume {path}: the folder is not writable ({problem}), and resuming writes "
            f"{CKPT_FILE}, {WEIGHTS_FILE} and {METRICS_FILE} there. Make it writable (chmod -R u+w {path}), or "
            f"resume a copy: cp -r {path} NEW_FOLDER && edh train --resume NEW_FOLDER."
        )
    raise RunFolderError(f"cannot train into {path}: the folder is not writable ({problem}). Make it writable "
                         "(chmod u+w) or pick another folder with --out.")


# ---- resuming with a spec ------------------------------------------------------------------------------
_UNSET = "(not set)"


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _allowed(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_MAY_CHANGE)


def resume_differences(saved: RunSpec, given: RunSpec) -> list[tuple[str, Any, Any]]:
    """The keys (dotted paths) where ``given`` differs from the run's ``saved`` spec, beyond what
    `RESUME_MAY_CHANGE` allows and the ``edh_version`` that wrote it: ``(key, saved value, given value)``."""
    old, new = _flatten(to_dict(saved)), _flatten(to_dict(given))
    keys = sorted((set(old) | set(new)) - {"edh_version"})
    return [(key, old.get(key, _UNSET), new.get(key, _UNSET)) for key in keys
            if old.get(key, _UNSET) != new.get(key, _UNSET) and not _allowed(key)]


def check_resume_spec(path: str | Path, saved: RunSpec, given: RunSpec, source: str = "the given spec") -> None:
    """A `ResumeMismatchError` listing every key where ``given`` would change what the run in ``path`` is."""
    differences = resume_differences(saved, given)
    if not differences:
        return
    path = Path(path)
    lines = "\n".join(f"  {key}: {old!r} in the run, {new!r} in {source}" for key, old, new in differences[:20])
    more = f"\n  ... and {len(differences) - 20} more" if len(differences) > 20 else ""
    raise ResumeMismatchError(
        f"cannot resume {path} with {source}: it changes what the run was trained as, and {CKPT_FILE} holds the "
        f"old model, data order and optimizer state ({len(differences)} key{'s' if len(differences) > 1 else ''}; "
        f"nothing was written):\n{lines}{more}\nResume with the run's own spec (`edh train --resume {path}`), "
        f"start a new run (`edh train SPEC --out NEW_FOLDER`, or --force to replace {path}), or change only "
        f"what may change on resume: {', '.join(RESUME_MAY_CHANGE)}."
    )
