"""Shared fixtures: fixed seeds, tiny models, a tiny run spec."""

from __future__ import annotations

import logging
import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_CLASSIFIER = {
    "encoder": {"name": "test_resnet", "in_channels": 1},
    "heads": {"label": {"type": "classification", "num_classes": 10}},
}


@pytest.fixture
def cli():
    """``edh.cli.main`` in this process, with the ``edh`` logger restored afterwards (main() stops it
    propagating, which would hide later tests' log records from caplog)."""
    from edh.cli import main

    logger = logging.getLogger("edh")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield main
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


@pytest.fixture
def registry_snapshot():
    """The component registries, restored after the test: a test that registers a component (a test-only
    head, a poisoned dataset) does it inside this fixture, so no later test sees it (the role tester runs
    every registered component and needs a case for each).

    Every role's package is imported first: its registrations happen once per process and must survive."""
    from edh.core import registry

    for role in registry.ROLES:
        registry.names(role)
    tables = [registry._REGISTRY] + ([registry._OWNERS] if hasattr(registry, "_OWNERS") else [])
    saved = [{role: dict(table) for role, table in tables_of.items()} for tables_of in tables]
    yield registry
    for tables_of, copy in zip(tables, saved):
        for role, table in tables_of.items():
            table.clear()
            table.update(copy[role])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_run_spec(**train) -> dict:
    """A run spec that trains in seconds: the conv encoder on 8x8 digits."""
    return {
        "model": {"encoder": {"name": "conv", "channels": [8, 16]},
                  "heads": {"label": {"type": "classification"}}},
        "data": {"name": "digits", "image_size": None, "batch_size": 64, "augment": "none"},
        "train": {"epochs": 2, "lr": 0.01, "seed": 0, **train},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }
