"""`train_run`: a run spec in, a trained run folder out (or an interrupted one resumed)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edh.data.base import DataBundle, DataInfo, build_data
from edh.utils.io import atomic_write_text
from edh.core.builder import option_names
from edh.core.registry import lookup
from edh.workflows.run import (CKPT_FILE, CURVES_FILE, METRICS_FILE, WEIGHTS_FILE, Run, load_run, read_run_spec, save_weights,
                     write_spec)
from edh.core.spec import RunSpec, to_dict
from edh.core.errors import SpecError

log = logging.getLogger("edh")


def resolve_spec(spec: RunSpec, info: DataInfo) -> RunSpec:
    """Fill what the data decides and the spec left out: the encoder's ``in_channels`` and, for each
    head whose target the data describes, options such as ``num_classes`` and ``class_names``."""
    data = to_dict(spec)
    encoder = data["model"]["encoder"]
    if "in_channels" in option_names(lookup("encoder", encoder["name"])):
        given = encoder.setdefault("in_channels", info.in_channels)
        if given != info.in_channels:
            raise SpecError(
                f"model.encoder.in_channels is {given} but the data {spec.data.name!r} has {info.in_channels}-channel "
                f"inputs; set in_channels: {info.in_channels} (or remove it to take the data's)"
            )
    for role in ("encoder", "decoder"):
        _fill_role_defaults(spec, data["model"][role], role, info.extra.get(f"{role}_defaults", {}))
    defaults = dict(info.extra.get("head_defaults", {}))
    if info.class_names:
        defaults.setdefault("label", {"num_classes": len(info.class_names), "class_names": list(info.class_names)})
    for name, head in data["model"]["heads"].items():
        key = head.get("target") or name
        if info.targets and key not in info.targets:
            raise SpecError(
                f"model.heads.{name} learns from target {key!r}, but the data {spec.data.name!r} gives targets "
                f"{', '.join(sorted(info.targets))}; set heads.{name}.target to one of them"
            )
        options = defaults.get(key, {})
        accepted = option_names(lookup("head", head["type"]))
        for key, value in options.items():
            if key in accepted and key not in head:
                if key == "class_names" and head.get("num_classes", len(value)) != len(value):
                    continue  # the spec chose another number of classes: keep default names
                head[key] = value
    return RunSpec.model_validate(data)


def _fill_role_defaults(spec: RunSpec, component: dict[str, Any] | None, role: str, defaults: dict[str, Any]) -> None:
    """Options the data decides for an encoder / decoder (``DataInfo.extra["<role>_defaults"]``: a text
    dataset's vocabulary size and special token ids): filled in when the builder takes them and the
    spec left them out; a different value in the spec is an error."""
    if component is None or not defaults:
        return
    accepted = option_names(lookup(role, component["name"]))
    for key, value in defaults.items():
        if key not in accepted:
            continue
        given = component.setdefault(key, value)
        if given != value:
            raise SpecError(
                f"model.{role}.{key} is {given} but the data {spec.data.name!r} gives {value} (its tokenizer); "
                f"remove model.{role}.{key} to take the data's value"
            )


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


def make_trainer(spec: RunSpec, run_dir: Path, callbacks: list[Any] | None = None, **overrides: Any):
    """A Lightning Trainer: edh's defaults, then the spec's ``trainer:`` keys, then ``overrides``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from edh.train.callbacks import RunFolderWriter
    from edh.train.checkpoint_io import AtomicCheckpointIO

    every = spec.train.checkpoint_every_n_steps
    checkpoint = ModelCheckpoint(dirpath=run_dir, save_last=True, save_top_k=0, every_n_train_steps=every,
                                 save_on_train_epoch_end=True)
    checkpoint.CHECKPOINT_NAME_LAST = CKPT_FILE.removesuffix(".ckpt")
    options: dict[str, Any] = dict(
        max_epochs=spec.train.epochs, logger=False, enable_model_summary=False, default_root_dir=str(run_dir),
        gradient_clip_val=spec.train.grad_clip, deterministic=spec.train.deterministic or None,
        num_sanity_val_steps=0, log_every_n_steps=10,
    )
    reserved = {"callbacks", "plugins", "logger", "default_root_dir"}
    clash = reserved & set(spec.trainer)
    if clash:
        raise SpecError(f"trainer.{sorted(clash)[0]} is set by edh (the run folder); remove it from the spec")
    options.update(spec.trainer)
    options.update(overrides)
    return L.Trainer(callbacks=[checkpoint, RunFolderWriter(run_dir), *(callbacks or [])],
                     plugins=[AtomicCheckpointIO()], **options)


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


def train_run(spec: RunSpec, run_dir: str | Path, resume: bool = False, init_from: Any = None,
              **trainer_overrides: Any) -> Run:
    """Train ``spec`` into ``run_dir``; with ``resume``, continue from ``run_dir/last.ckpt``.

    ``init_from`` (a trained `Model`) starts training from its weights wherever they fit
    (`edh.workflows.surgery.transfer_weights`; used by ``edh finetune``).

    Returns the loaded `Run` (its weights are the last epoch's); ``edh eval`` tests it.
    """
    import lightning as L

    from edh.core.model import Model
    from edh.train.task import EdhTask

    _quiet_lightning()

    run_dir = Path(run_dir)
    ckpt = run_dir / CKPT_FILE
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"cannot resume: {ckpt} does not exist (the run stopped before its first "
                                    "checkpoint); start it again without --resume")
        saved, _ = read_run_spec(run_dir)
        if spec is None:
            spec = saved
    L.seed_everything(spec.train.seed, workers=True, verbose=False)
    bundle = build_data(spec.data.name, spec.data.options(), spec.data.seed)
    spec = resolve_spec(spec, bundle.info)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # starting over: no file of an earlier run may outlive it (a stale last.ckpt would be resumed)
        for stale in (CKPT_FILE, WEIGHTS_FILE, METRICS_FILE, CURVES_FILE):
            (run_dir / stale).unlink(missing_ok=True)
    write_spec(run_dir, spec, bundle.info)
    for name, text in bundle.files.items():  # e.g. the tokenizer fitted on the training split
        atomic_write_text(run_dir / name, text)
    model = Model(spec.model, pretrained=init_from is None).bind_data(bundle.info)
    if init_from is not None and not resume:
        from edh.workflows.surgery import transfer_weights

        for line in transfer_weights(init_from, model):
            log.info("finetune: %s", line)
    if spec.train.channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    if spec.train.compile:
        compile_forward(model)
    task = EdhTask(model, spec.train)
    train_loader, val_loader = _loaders(bundle, spec)
    from edh.train.data_loading import ResumeCallback

    trainer = make_trainer(spec, run_dir, [ResumeCallback(train_loader)], **trainer_overrides)
    trainer.fit(task, train_loader, val_loader, ckpt_path=str(ckpt) if resume else None)
    if trainer.is_global_zero:
        save_weights(run_dir, model)
    trainer.strategy.barrier()
    return load_run(run_dir)
