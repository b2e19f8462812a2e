"""Shared fixtures: fixed seeds, tiny models, a tiny run spec."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import traceback

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


def edh_in_process(*args, check: bool = True) -> subprocess.CompletedProcess:
    """``edh ARGS`` run through ``edh.cli.main`` in this process, answered like ``subprocess.run``: the
    exit code, stdout and stderr. It spares each call the seconds a fresh interpreter spends importing
    torch (and Lightning), for tests that check a command's output rather than the process around it.
    An exception escaping ``main`` is what the real command line prints as a traceback: exit code 1 and
    the traceback on stderr. The ``edh`` logger is restored afterwards (as the ``cli`` fixture does);
    usable at any fixture scope."""
    from edh.cli import main

    argv = [str(arg) for arg in args]
    logger = logging.getLogger("edh")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit:  # argparse: a usage error (2) or --help (0)
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            except Exception:  # noqa: BLE001 - on the command line: a traceback and exit code 1
                traceback.print_exc()
                code = 1
    finally:
        logger.handlers[:] = saved[0]
        logger.propagate, logger.level = saved[1], saved[2]
    result = subprocess.CompletedProcess(["edh", *argv], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"edh {' '.join(argv)} failed (rc {code}):\n{result.stdout}\n{result.stderr}")
    return result


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
