"""A training data order that a resumed run repeats exactly, from the middle of an epoch on.

Lightning restores the model, optimizer, schedule and loop counters from ``last.ckpt``, but a plain
shuffled ``DataLoader`` starts its epoch again in a new order, and random augmentation and dropout
draw from wherever the global RNG happens to be. Three pieces make a resumed run retrace the
uninterrupted one, batch for batch:

- `EpochSampler`: the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone; after a
  resume it starts ``skip`` samples into it.
- `SeededItems`: each item is loaded with torch's RNG seeded from ``(seed, epoch, index)``, so
  random augmentation of a sample is the same in any run, worker or resumed process.
- `ResumeCallback`: counts the samples trained on in the current epoch and saves that count and the
  RNG states (torch, numpy, random; dropout draws from them) in the checkpoint; after a resume it
  sets the sampler's ``skip`` and restores the RNG states just before the first batch.

With ``trainer.strategy: ddp`` Lightning shards the order over the processes (its
``DistributedSamplerWrapper``); a run resumed mid-epoch there starts the interrupted epoch over.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_MIX = 1_000_003  # spreads (seed, epoch, index) over distinct generator seeds


class EpochSampler(Sampler):
    """A shuffled order per epoch, from ``(seed, epoch)`` only; yields ``(epoch, index)`` keys.

    Args:
        size: samples in the dataset.
        seed: the run's ``train.seed``.

    Attributes:
        skip: samples of the next epoch's order to leave out (set after a mid-epoch resume, then 0).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * _MIX + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self.skip = self.skip, 0
        epoch = self.epoch
        for index in self.order(epoch)[start:].tolist():
            yield epoch, index

    def __len__(self) -> int:
        return self.size


class SeededItems(Dataset):
    """``dataset[index]`` for keys ``(epoch, index)``, loaded with torch's CPU RNG seeded from
    ``(seed, epoch, index)`` (the caller's RNG states are left as they were; ``torch.manual_seed``
    would also reseed CUDA's generator, which dropout on a GPU draws from).

    Args:
        dataset: the training split.
        seed: the run's ``train.seed``.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):  # saves / restores the CPU generator only, so ...
            torch.default_generator.manual_seed((self.seed * _MIX + epoch) * _MIX + index)  # ... seed only it
            return self.dataset[index]


def train_loader(dataset: Dataset, seed: int, **options: Any) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` in the resumable `EpochSampler` order (``options``: batch size,
    workers, collate function, drop_last; not ``shuffle`` or ``sampler``)."""
    return DataLoader(SeededItems(dataset, seed), sampler=EpochSampler(len(dataset), seed), **options)


def _rng_states() -> dict[str, Any]:
    """The global RNG states, as tensors and plain types (a checkpoint stays loadable weights-only)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeCallback(L.Callback):
    """Saves where the epoch's order was and the RNG states; on resume, continues from there.

    Lightning creates the resumed epoch's data iterator right after loading the checkpoint (before
    ``set_epoch`` and ``on_train_epoch_start``), so the sampler is positioned in `load_state_dict`.

    Args:
        loader: the `train_loader` of this run (its `EpochSampler` gets the epoch and ``skip``).
    """

    def __init__(self, loader: DataLoader) -> None:
        self.sampler = loader.sampler if isinstance(loader.sampler, EpochSampler) else None
        size = len(loader.dataset)
        self.epoch_samples = (size // loader.batch_size) * loader.batch_size if loader.drop_last else size
        self.epoch = 0
        self.seen = 0  # samples trained on in ``epoch``
        self._rng: dict[str, Any] | None = None
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seen": self.seen, "rng": _rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import torch.distributed as dist

        self._rng = state_dict["rng"]
        epoch, seen = int(state_dict["epoch"]), int(state_dict["seen"])
        if seen >= self.epoch_samples:  # saved at the end of an epoch: the next one starts
            epoch, seen = epoch + 1, 0
        if self.sampler is None or (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return  # sharded over processes (ddp): the interrupted epoch starts over
        self.epoch, self.seen = epoch, seen
        self.sampler.set_epoch(epoch)
        self.sampler.skip = seen

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            self.epoch, self.seen = trainer.current_epoch, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._rng is not None:  # after the resumed loader drew its own seeds
            _set_rng_states(self._rng)
            self._rng = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        inputs = batch[0]
        self.seen += len(inputs) if hasattr(inputs, "__len__") else 1
