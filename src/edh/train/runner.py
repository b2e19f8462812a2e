"""`train_run`: a run spec in, a trained run folder out (or an interrupted one resumed)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edh.data.base import DataBundle, build_data
from edh.utils import cpu
from edh.utils.io import FolderLock, atomic_write_text, remove_stale_temp_files
from edh.utils.threads import apply_spec_threads
from edh.workflows.run import (CKPT_FILE, METRICS_FILE, WEIGHTS_FILE, Run, check_resume_spec, check_writable,
                               commit_start_over, load_run, read_run_spec, recover_interrupted_start,
                               refuse_start_over, restore_previous, run_files, save_weights, stage_previous,
                               write_spec)
from edh.core.spec import RunSpec, to_dict
from edh.core.errors import RunFolderError, SpecError
from edh.train.resolve import resolve_spec

log = logging.getLogger("edh")


def _loaders(bundle: DataBundle, spec: RunSpec):
    from torch.utils.data import DataLoader

    common = dict(batch_size=spec.data.batch_size, num_workers=spec.data.num_workers, collate_fn=bundle.collate_fn,
                  persistent_workers=spec.data.num_workers > 0)
    if len(bundle.train) == 0:
        raise ValueError(f"the training split of {spec.data.name!r} is empty; nothing to train on")
    from edh.train.data_loading import train_loader  # shuffled from (seed, epoch): resumable mid-epoch

    train = train_loader(bundle.train, spec.train.seed, drop_last=len(bundle.train) > spec.data.batch_size, **common)
    val = DataLoader(bundle.val if len(bundle.val) else bundle.test, **common)
    return train, val


RESERVED_TRAINER_KEYS = ("callbacks", "plugins", "default_root_dir")  # edh sets them (the run folder)
# trainer.logger is taken: it means the same as the spec's logging: (edh.train.loggers)


def check_trainer_options(spec: RunSpec, overrides: dict[str, Any] | None = None) -> None:
    """A `SpecError` for each ``trainer:`` key Lightning's ``Trainer`` does not take (with the close
    matches), each one edh sets itself, ``enable_checkpointing: false`` (edh needs ``last.ckpt``) and a
    ``train.checkpoint_every_n_steps`` that is not a positive number of steps. Checked before anything
    is written to the run folder."""
    import difflib
    import inspect

    import lightning as L

    from edh.train.loggers import logging_section, parse_logging

    parse_logging(*logging_section(spec))  # an unknown logger or bad option: a SpecError naming the key
    accepted = [name for name in inspect.signature(L.Trainer.__init__).parameters if name != "self"]
    problems = []
    for where, options in (("trainer.", spec.trainer), ("train_run option ", overrides or {})):
        for key in options:
            if key == "logger" and options is spec.trainer:
                continue  # the same as logging:, checked above
            if key in RESERVED_TRAINER_KEYS or key == "logger":
                problems.append(f"{where}{key}: set by edh (its run folder, checkpoints and metrics); remove it")
            elif key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.6)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                problems.append(f"{where}{key}: not an option of lightning.Trainer; {hint}"
                                "(`python -c \"import lightning; help(lightning.Trainer)\"` lists them)")
    if "enable_checkpointing" in spec.trainer and not spec.trainer["enable_checkpointing"]:
        problems.append(
            "trainer.enable_checkpointing: false is not possible: edh keeps the run's last.ckpt, which "
            "`edh train --resume` continues from and a --force start waits for before it deletes the run it "
            "replaces; remove the key (train.checkpoint_every_n_steps sets how often it is written)")
    every = spec.train.checkpoint_every_n_steps
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        problems.append(f"train.checkpoint_every_n_steps: must be a positive number of optimizer steps (got "
                        f"{every!r}); remove it to checkpoint at the end of each epoch only")
    if problems:
        raise SpecError("invalid trainer options in the spec:\n" + "\n".join(f"  {line}" for line in problems))


def make_trainer(spec: RunSpec, run_dir: Path, callbacks: list[Any] | None = None, **overrides: Any):
    """A Lightning Trainer: edh's defaults, then the spec's ``trainer:`` keys, then ``overrides``.

    Its checkpoint I/O is `AtomicCheckpointIO` (``trainer.strategy.checkpoint_io``); ``last.ckpt`` is
    written at every epoch end and every ``train.checkpoint_every_n_steps`` steps (`RunCheckpoint`).
    When stdout or stderr is not a terminal and neither sets ``enable_progress_bar``, Lightning's bar is
    off and `edh.train.progress.PlainProgress` prints a line every ``EDH_PROGRESS_SECONDS`` (5) seconds.
    Options Lightning refuses (an accelerator this machine lacks, ``devices: 0``) are a `SpecError`."""
    import lightning as L

    from edh.train.callbacks import RunCheckpoint, RunFolderWriter
    from edh.train.checkpoint_io import AtomicCheckpointIO
    from edh.train.loggers import LoggerExtras, image_count, make_loggers
    from edh.train.progress import PlainProgress, wants_plain_progress

    check_trainer_options(spec, overrides)
    loggers = make_loggers(spec, run_dir)
    checkpoint = RunCheckpoint(run_dir, every_n_train_steps=spec.train.checkpoint_every_n_steps)
    options: dict[str, Any] = dict(
        max_epochs=spec.train.epochs, logger=False, enable_model_summary=False, default_root_dir=str(run_dir),
        gradient_clip_val=spec.train.grad_clip, deterministic=spec.train.deterministic or None,
        num_sanity_val_steps=0, log_every_n_steps=10,
    )
    options.update(spec.trainer)
    options.pop("enable_checkpointing", None)  # true (false was refused above): edh's RunCheckpoint
    options.update(overrides)
    options["logger"] = loggers or False  # csv only: edh's metrics.csv (RunFolderWriter), no Lightning logger
    extra = list(callbacks or [])
    if loggers:
        from lightning.pytorch.callbacks import LearningRateMonitor

        extra += [LearningRateMonitor(logging_interval="step"), LoggerExtras(to_dict(spec), image_count(spec))]
    if "enable_progress_bar" not in options and wants_plain_progress():
        options["enable_progress_bar"] = False  # not a terminal: a bar redraws rarely there; plain lines
        extra.append(PlainProgress())
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lightning.pytorch.accelerators import CPUAccelerator

    try:
        trainer = L.Trainer(callbacks=[checkpoint, RunFolderWriter(run_dir), *extra],
                            plugins=[AtomicCheckpointIO()], **options)
    except (MisconfigurationException, ValueError, TypeError, ImportError) as error:
        given = {k: v for k, v in {**spec.trainer, **overrides}.items()}
        raise SpecError(f"Lightning refused the trainer options {given}: {error}. Change the spec's trainer: "
                        "section (e.g. trainer.accelerator: cpu where there is no GPU)") from None
    if "bf16" in str(trainer.precision) and isinstance(trainer.accelerator, CPUAccelerator):
        cpu.warn_if_bf16_is_emulated(f"trainer.precision: {trainer.precision}")
    return trainer


def launch_rank_zero() -> bool:
    """Whether this process is the one that writes the run folder: the only process, or rank 0 of a
    multi-process launch (Lightning's own DDP launcher, torchrun, SLURM), read from the environment
    (Lightning starts its other processes with ``LOCAL_RANK`` set)."""
    import os

    keys = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    return all(os.environ.get(key, "0") in ("", "0") for key in keys)


def compile_forward(model: Any) -> None:
    """``train.compile``: run ``model``'s forward through ``torch.compile`` (`edh.utils.perf.maybe_compile`:
    if compiling fails, a warning says why and training goes on eagerly). The model object, its
    roles and its state dict keys stay as they are; only its ``forward`` is replaced."""
    from torch import nn

    from edh.utils.perf import maybe_compile

    eager = model.forward

    class EagerForward(nn.Module):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return eager(*args, **kwargs)

    object.__setattr__(model, "forward", maybe_compile(EagerForward()))  # not a submodule: no new state keys
    log.info("train.compile: the model's forward runs through torch.compile (eager if compiling fails)")


def _quiet_lightning() -> None:
    """Drop Lightning's tips and info chatter (GPU/TPU availability); keep its warnings."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")  # a run folder moved, then resumed


def train_run(spec: RunSpec | None, run_dir: str | Path, resume: bool = False, init_from: Any = None, *,
              force: bool = False, source: str | None = None, epochs: int | None = None,
              **trainer_overrides: Any) -> Run:
    """Train ``spec`` into ``run_dir``; with ``resume``, continue from ``run_dir/last.ckpt``.

    ``init_from`` (a trained `Model`) starts training from its weights wherever they fit
    (`edh.workflows.surgery.transfer_weights`; used by ``edh finetune``).

    What it guarantees about the run folder (docs/reliability.md, "Run folders"):

    - a folder that holds a run (`edh.workflows.run.holds_run`) is refused (`RunExistsError`) unless
      ``force``; with ``force`` the old run is moved into ``run_dir/.previous`` and deleted only once the
      new run has written its first complete checkpoint; if it never does (a crash, Ctrl-C, a full disk:
      here, or SIGKILL: at the next start or resume) the old run is put back as it was;
    - ``resume`` with a ``spec`` that changes the model, data or training beyond
      `edh.workflows.run.RESUME_MAY_CHANGE` is refused (`ResumeMismatchError`, each key listed);
    - both, the trainer options and a writable folder are checked before anything is written;
    - the folder is locked (`edh.utils.io.FolderLock`) while it is written: a second process gets a
      `RunInUseError` naming the first one's PID;
    - Ctrl-C / SIGTERM become `TrainingInterrupted` saying where training stopped and how to resume; a
      full disk is a `DiskFullError` naming the file, the previous checkpoint intact.

    Under DDP only the launch's rank 0 (`launch_rank_zero`) checks, locks and writes the folder.
    ``source`` names the spec in messages (its file); ``epochs`` replaces ``train.epochs`` (of the
    run's own spec when resuming without one). Returns the loaded `Run` (its weights are the last
    epoch's); ``edh eval`` tests it.
    """
    _quiet_lightning()
    run_dir = Path(run_dir)
    writer = launch_rank_zero()
    if spec is not None:
        check_trainer_options(spec, trainer_overrides)  # a bad spec leaves no trace: not even a folder
    if resume and not run_dir.is_dir():
        raise RunFolderError(f"cannot resume {run_dir}: the folder does not exist (train one with "
                             f"`edh train RUN.yaml --out {run_dir}`)")
    lock = None
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_writable(run_dir, resume)
        lock = FolderLock(run_dir, "run folder").acquire()
    try:
        if writer:
            recover_interrupted_start(run_dir)
        saved = None
        if resume:
            if not (run_dir / CKPT_FILE).is_file():
                raise RunFolderError(
                    f"cannot resume {run_dir}: {run_dir / CKPT_FILE} does not exist (the run stopped before its "
                    f"first checkpoint); start it again: `edh train SPEC --out {run_dir}` (no --resume)")
            saved, _ = read_run_spec(run_dir)
            spec = saved if spec is None else spec
        elif writer and not force:
            refuse_start_over(run_dir)
        if spec is None:
            raise SpecError("train_run needs a spec (or resume=True, to take the run's own)")
        apply_spec_threads(spec.train.threads)
        if epochs is not None:
            spec = spec.model_copy(deep=True)
            spec.train.epochs = epochs
        check_trainer_options(spec, trainer_overrides)
        return _train(spec, saved, run_dir, resume, init_from, writer, source, trainer_overrides)
    finally:
        if lock is not None:
            lock.release()


def _train(spec: RunSpec, saved: RunSpec | None, run_dir: Path, resume: bool, init_from: Any, writer: bool,
           source: str | None, trainer_overrides: dict[str, Any]) -> Run:
    import signal
    import threading

    import lightning as L

    from edh.core.model import Model
    from edh.train.callbacks import StopRecorder
    from edh.train.data_loading import ResumeCallback
    from edh.train.task import EdhTask

    L.seed_everything(spec.train.seed, workers=True, verbose=False)
    bundle = build_data(spec.data.name, spec.data.options(), spec.data.seed)
    spec = resolve_spec(spec, bundle.info)
    if saved is not None:  # before anything is written
        check_resume_spec(run_dir, saved, spec, source or "the given spec")
    model = Model(spec.model, pretrained=init_from is None).bind_data(bundle.info)
    if init_from is not None and not resume:
        from edh.workflows.surgery import transfer_weights

        for line in transfer_weights(init_from, model):
            log.info("finetune: %s", line)
    if spec.train.channels_last:
        from edh.layers.conv_grad import to_channels_last_for_training

        model = to_channels_last_for_training(model)
    if spec.train.compile:
        compile_forward(model)
    task = EdhTask(model, spec.train)
    train_loader, val_loader = _loaders(bundle, spec)
    recorder = StopRecorder()
    trainer = make_trainer(spec, run_dir, [ResumeCallback(train_loader), recorder], **trainer_overrides)
    io = trainer.strategy.checkpoint_io
    staged = None
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        if writer:
            if not resume:
                files = run_files(run_dir)
                if any(p.name in (WEIGHTS_FILE, METRICS_FILE) or p.suffix == ".ckpt" for p in files):
                    staged = stage_previous(run_dir)  # force (refuse_start_over let it through)
                else:  # what a run stopped before its first checkpoint left: nothing trained
                    for item in files:
                        if item.is_file():
                            item.unlink()
            remove_stale_temp_files(run_dir, legacy=True)  # a killed save's leftovers (the folder is locked)
            if staged is not None and hasattr(io, "after_save"):
                io.after_save = lambda path: commit_start_over(run_dir)
            write_spec(run_dir, spec, bundle.info)
            for name, text in bundle.files.items():  # e.g. the tokenizer fitted on the training split
                atomic_write_text(run_dir / name, text)
        trainer.fit(task, train_loader, val_loader, ckpt_path=str(run_dir / CKPT_FILE) if resume else None)
        if trainer.is_global_zero:
            save_weights(run_dir, model)
            if staged is not None:
                commit_start_over(run_dir)
    except BaseException as error:
        restored = bool(staged is not None and writer and restore_previous(run_dir, tuple(bundle.files)))
        explained = _explain_stop(error, trainer, recorder, io, run_dir, restored, source)
        if explained is None:
            raise
        raise explained from None
    finally:
        if main_thread and signal.getsignal(signal.SIGINT) is not sigint:
            signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C from its first one on
    trainer.strategy.barrier()
    return load_run(run_dir)


def _last_checkpoint(io: Any, run_dir: Path) -> str | None:
    """Where the run's newest checkpoint is, in words, or None if it has none."""
    last = getattr(io, "last", None)
    if last is None and (run_dir / CKPT_FILE).is_file():
        from edh.utils.io import torch_load

        try:
            checkpoint = torch_load(run_dir / CKPT_FILE)
            last = {"epoch": checkpoint.get("epoch"), "step": checkpoint.get("global_step")}
        except (OSError, ValueError):
            return f"{run_dir / CKPT_FILE}"
    if last is None:
        return None
    return f"{run_dir / CKPT_FILE} (epoch {last['epoch']}, step {last['step']})"


def _explain_stop(error: BaseException, trainer: Any, recorder: Any, io: Any, run_dir: Path, restored: bool,
                  source: str | None) -> BaseException | None:
    """The exception a stopped fit should surface as (None: the original): Ctrl-C and SIGTERM become
    `TrainingInterrupted` (where training stopped, the last checkpoint, how to resume), a full disk a
    `DiskFullError` that also says how to go on."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from edh.core.errors import DiskFullError, TrainingInterrupted

    stopped = recorder.exception
    if isinstance(error, SIGTERMException) or isinstance(stopped, SIGTERMException):
        how, code = "SIGTERM", 143
    elif isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit)
                                                  and isinstance(stopped, KeyboardInterrupt)):
        how, code = "Ctrl-C", 130
    elif isinstance(error, DiskFullError):
        how, code = None, 2
    else:
        return None
    checkpoint = None if restored else _last_checkpoint(io, run_dir)
    if checkpoint:
        way = f"its last checkpoint is {checkpoint}: resume it with `edh train --resume {run_dir}`"
    elif restored:
        way = (f"the new run had no checkpoint yet, so the run it was replacing is back in {run_dir} as it was "
               f"(start over again with `edh train SPEC --out {run_dir} --force`)")
    else:
        way = f"no checkpoint was written yet: start it again with `edh train {source or 'SPEC'} --out {run_dir}`"
    if how is None:
        full = DiskFullError(f"{error} Training of {run_dir} stopped at epoch {trainer.current_epoch}, step "
                             f"{trainer.global_step}; {way}" + (" once there is space." if checkpoint else "."))
        full.errno, full.path = error.errno, getattr(error, "path", None)
        return full
    if recorder.exception is not None:  # where Lightning's loop was when it caught the signal
        epoch, step = recorder.epoch, recorder.step
    else:
        epoch, step = trainer.current_epoch, trainer.global_step
    interrupted = TrainingInterrupted(f"training of {run_dir} stopped by {how} at epoch {epoch}, step {step}; "
                                      f"{way}.")
    interrupted.exit_code = code
    return interrupted
