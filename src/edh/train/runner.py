"""`train_run`: a run spec in, a trained run folder out (or an interrupted one resumed)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from edh.data.base import DataBundle, DataInfo, build_data
from edh.registry import lookup
from edh.run import CKPT_FILE, Run, load_run, read_run_spec, save_weights, write_spec
from edh.spec import RunSpec, SpecError, to_dict

log = logging.getLogger("edh")


def resolve_spec(spec: RunSpec, info: DataInfo) -> RunSpec:
    """Fill what the data decides and the spec left out: the encoder's ``in_channels`` and, for each
    head whose target the data describes, options such as ``num_classes`` and ``class_names``."""
    data = to_dict(spec)
    encoder = data["model"]["encoder"]
    builder = lookup("encoder", encoder["name"])
    target = builder.__init__ if inspect.isclass(builder) else builder
    if info.input_kind == "image" and "in_channels" in inspect.signature(target).parameters:
        given = encoder.setdefault("in_channels", info.in_channels)
        if given != info.in_channels:
            raise SpecError(
                f"model.encoder.in_channels is {given} but the data {spec.data.name!r} has {info.in_channels}-channel "
                f"images; set in_channels: {info.in_channels} (or remove it to take the data's)"
            )
    defaults = dict(info.extra.get("head_defaults", {}))
    if info.class_names:
        defaults.setdefault("label", {"num_classes": len(info.class_names), "class_names": list(info.class_names)})
    for name, head in data["model"]["heads"].items():
        options = defaults.get(head.get("target") or name, {})
        head_builder = lookup("head", head["type"])
        accepted = inspect.signature(head_builder.__init__ if inspect.isclass(head_builder) else head_builder).parameters
        for key, value in options.items():
            if key in accepted and key not in head:
                head[key] = value
    return RunSpec.model_validate(data)


def _loaders(bundle: DataBundle, spec: RunSpec):
    from torch.utils.data import DataLoader

    common = dict(batch_size=spec.data.batch_size, num_workers=spec.data.num_workers, collate_fn=bundle.collate_fn,
                  persistent_workers=spec.data.num_workers > 0)
    if len(bundle.train) == 0:
        raise ValueError(f"the training split of {spec.data.name!r} is empty; nothing to train on")
    train = DataLoader(bundle.train, shuffle=True, drop_last=len(bundle.train) > spec.data.batch_size, **common)
    val = DataLoader(bundle.val if len(bundle.val) else bundle.test, **common)
    test = DataLoader(bundle.test, **common)
    return train, val, test


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


def _quiet_lightning() -> None:
    """Drop Lightning's tips and info chatter (GPU/TPU availability); keep its warnings."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def train_run(spec: RunSpec, run_dir: str | Path, resume: bool = False, **trainer_overrides: Any) -> Run:
    """Train ``spec`` into ``run_dir``; with ``resume``, continue from ``run_dir/last.ckpt``.

    Returns the loaded `Run` (best = last weights) after testing on the test split.
    """
    import lightning as L

    from edh.model import Model
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
    write_spec(run_dir, spec, bundle.info)
    model = Model(spec.model)
    if spec.train.channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    reconstruction = None
    if not model.heads:
        from edh.train.reconstruction import make_reconstruction_loss

        reconstruction = make_reconstruction_loss(spec, bundle.info)
    task = EdhTask(model, spec.train, reconstruction)
    train_loader, val_loader, test_loader = _loaders(bundle, spec)
    trainer = make_trainer(spec, run_dir, **trainer_overrides)
    trainer.fit(task, train_loader, val_loader, ckpt_path=str(ckpt) if resume else None)
    if trainer.is_global_zero:
        save_weights(run_dir, model)
    trainer.test(task, test_loader, verbose=False)
    return load_run(run_dir)
