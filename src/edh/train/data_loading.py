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

Under DDP (several processes) `EpochSampler` shards the order itself, as ``DistributedSampler``
does (padded to a multiple of the processes with the epoch's first samples, process ``r`` taking
every ``W``-th from ``r``; Lightning leaves a ``DistributedSampler`` alone). After ``k`` samples per
process the processes together have trained on exactly the first ``k * W`` samples of the order, so
the checkpoint records that position; a resumed run shards the rest of the epoch over its processes.
With the same number of processes it continues batch for batch; with another number it trains each
remaining sample of the epoch once (the batches differ). The RNG states saved are rank 0's: every
process starts from the same seed and draws the same amounts, so they agree.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

_MIX = 1_000_003  # spreads (seed, epoch, index) over distinct generator seeds


class EpochSampler(DistributedSampler):
    """A shuffled order per epoch, from ``(seed, epoch)`` only; yields ``(epoch, index)`` keys.

    A ``DistributedSampler`` (so Lightning does not wrap it) that shards the order over the processes
    itself, padded like ``DistributedSampler`` (``drop_last=False``); one process takes it all.

    Args:
        size: samples in the dataset.
        seed: the run's ``train.seed``.
        replicas, rank: the processes and this one's rank (default: from ``torch.distributed`` when it
            is initialized, else 1 and 0).

    Attributes:
        skip: samples of the next epoch's order (all processes together, from its start) to leave out:
            set after a mid-epoch resume, then 0.
    """

    def __init__(self, size: int, seed: int, replicas: int | None = None, rank: int | None = None) -> None:
        Sampler.__init__(self)  # not DistributedSampler's: the process group may not exist yet
        self.size, self.seed = size, seed
        self.epoch = 0
        self.skip = 0
        self._replicas, self._rank = replicas, rank
        self.shuffle, self.drop_last = True, False

    def world(self) -> tuple[int, int]:
        """(processes, this process's rank)."""
        if self._replicas is not None:
            return self._replicas, self._rank or 0
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    @property
    def num_replicas(self) -> int:  # DistributedSampler's attributes, for code that reads them
        return self.world()[0]

    @property
    def rank(self) -> int:
        return self.world()[1]

    @property
    def num_samples(self) -> int:
        return len(self)

    @property
    def total_size(self) -> int:
        return len(self) * self.world()[0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * _MIX + epoch)
        return torch.randperm(self.size, generator=generator)

    def shard(self, epoch: int, start: int = 0) -> list[int]:
        """This process's indices of ``epoch`` from position ``start`` of the order on."""
        replicas, rank = self.world()
        order = self.order(epoch)
        rest = order[min(start, self.size):]
        pad = (-len(rest)) % replicas
        if pad and self.size:  # as DistributedSampler: repeat the epoch's first samples
            rest = torch.cat([rest, order.repeat(math.ceil(pad / self.size))[:pad]])
        return rest[rank::replicas].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self.skip = self.skip, 0
        epoch = self.epoch
        for index in self.shard(epoch, start):
            yield epoch, index

    def __len__(self) -> int:
        return math.ceil(self.size / self.world()[0])


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
    workers, collate function, drop_last; not ``shuffle`` or ``sampler``).

    Its own ``generator`` draws the seed each epoch's iterator takes (for its workers), not the global
    RNG: the RNG states a checkpoint saves at an epoch's end are then the ones the next epoch's first
    batch starts from, in the uninterrupted run as in the resumed one."""
    return DataLoader(SeededItems(dataset, seed), sampler=EpochSampler(len(dataset), seed),
                      generator=torch.Generator().manual_seed(seed), **options)


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
    The position saved is global (samples of the order all processes together trained on), with the
    number of processes, so a run may resume on another number of processes.

    Args:
        loader: the `train_loader` of this run (its `EpochSampler` gets the epoch and ``skip``).
    """

    def __init__(self, loader: DataLoader) -> None:
        self.sampler = loader.sampler if isinstance(loader.sampler, EpochSampler) else None
        self.size, self.batch_size, self.drop_last = len(loader.dataset), loader.batch_size, loader.drop_last
        self.epoch = 0
        self.start = 0  # position in the epoch's order where this process's pass began (a resume)
        self.seen = 0  # samples this process trained on in ``epoch`` since ``start``
        self.complete = False  # the epoch ended (a checkpoint saved now is an epoch end's)
        self._rng: dict[str, Any] | None = None
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")

    def _replicas(self) -> int:
        return self.sampler.world()[0] if self.sampler is not None else 1

    def epoch_samples(self, replicas: int) -> int:
        """Samples one process trains on in a whole epoch, with ``replicas`` processes."""
        per_process = math.ceil(self.size / replicas)
        return (per_process // self.batch_size) * self.batch_size if self.drop_last else per_process

    def state_dict(self) -> dict[str, Any]:
        replicas = self._replicas()
        return {"epoch": self.epoch, "position": self.start + self.seen * replicas, "seen": self.seen,
                "replicas": replicas, "complete": self.complete, "rng": _rng_states()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """With ``max_steps`` (``edh train --max-steps``, ``trainer.max_steps``) Lightning resumes every
        checkpoint as if saved mid-epoch; one saved at an epoch's end would then count the next epoch
        as done with no batch trained. Such a checkpoint's loop state is made the next epoch's start
        (called before Lightning restores the loops from it)."""
        mine = checkpoint.get("callbacks", {}).get(self.state_key, {})
        if trainer.max_steps == -1 or not mine.get("complete"):
            return
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
        if not epochs or not batches:
            return
        for part in ("total", "current"):
            epochs[part]["completed"] = epochs[part]["processed"]
        for key in batches["current"]:
            batches["current"][key] = 0
        batches["is_last_batch"] = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict["rng"]
        epoch = int(state_dict["epoch"])
        replicas = int(state_dict.get("replicas", 1))
        position = int(state_dict.get("position", state_dict["seen"]))  # "seen": edh before DDP resumes
        complete = bool(state_dict.get("complete", False))
        if complete or position >= self.epoch_samples(replicas) * replicas:  # saved at an epoch's end
            epoch, position = epoch + 1, 0
        self.epoch, self.start, self.seen, self.complete = epoch, position, 0, False
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            self.sampler.skip = position

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            self.epoch, self.start, self.seen = trainer.current_epoch, 0, 0
        self.complete = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._rng is not None:  # after the resumed loader drew its own seeds
            _set_rng_states(self._rng)
            self._rng = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        inputs = batch[0]
        self.seen += len(inputs) if hasattr(inputs, "__len__") else 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.complete = True  # before the checkpoint callbacks (Lightning runs them last)
