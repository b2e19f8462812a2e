"""How many CPU threads torch uses, and how its OpenMP threads wait.

On a machine shared with other CPU-bound processes, torch's default (one intra-op thread per core,
OpenMP threads that spin while they wait for work) makes a training far slower than its fair share
of the CPU: spinning threads burn the time slices the other processes need and are preempted in the
middle of a parallel region, so every region waits for its slowest thread. edh therefore

- for training commands (``THREADS_SLEEP`` in `edh.commands`), asks OpenMP to sleep rather than spin
  between parallel regions (``OMP_WAIT_POLICY=PASSIVE``; ``KMP_BLOCKTIME=0`` for Intel's OpenMP), unless
  the environment already says otherwise. OpenMP reads these once, when torch is loaded, so
  `set_wait_policy` must run before ``import torch``: the ``edh`` command line calls it right after
  parsing its arguments. Other commands keep OpenMP's default short spin: latency-bound work such as a
  decoding step (a hundred small parallel regions per token) ran at 0.56x with sleeping threads
  (``python bench/wait_policy.py``);
- sets the number of intra-op threads: ``--threads N`` / ``train.threads``, else ``EDH_THREADS``, else
  the cores this process may run on (`os.sched_getaffinity`).

Data-loader workers are separate processes; torch already gives each of them one thread.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("edh")

THREADS_ENV = "EDH_THREADS"
MAX_THREADS = 1024
WAIT_POLICY_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def set_wait_policy() -> bool:
    """Ask OpenMP threads to sleep, not spin, when idle (keeps values the environment already has).

    Returns:
        True when torch is not loaded yet (the setting takes effect), False when it is (too late: OpenMP
        read its environment when torch was loaded).
    """
    for key, value in WAIT_POLICY_ENV.items():
        os.environ.setdefault(key, value)
    return "torch" not in sys.modules


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(value: object, where: str) -> int:
    """``value`` as a thread count (a whole number in 1..MAX_THREADS), else a ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where} must be a whole number of threads (1..{MAX_THREADS}), got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{where} must be a whole number of threads (1..{MAX_THREADS}), got {value!r}") from None
    if not 1 <= number <= MAX_THREADS:
        raise ValueError(f"{where} must be between 1 and {MAX_THREADS} threads, got {number}; "
                         f"{usable_cores()} cores are usable here")
    return number


def default_threads() -> int:
    """``EDH_THREADS`` when set (validated), else the usable cores."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        return check_threads(text, f"the environment variable {THREADS_ENV}")
    return usable_cores()


def apply_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (and its inter-op threads, while that is still allowed).

    Args:
        threads: the count; None: `default_threads`.

    Returns:
        The count now in use (``torch.get_num_threads()``).
    """
    number = default_threads() if threads is None else check_threads(threads, "the thread count")
    import torch

    torch.set_num_threads(number)
    try:  # only allowed before any inter-op parallel work has started
        torch.set_num_interop_threads(number)
    except RuntimeError:
        log.debug("inter-op threads already started; left at %d", torch.get_num_interop_threads())
    return torch.get_num_threads()


def apply_spec_threads(threads: int | None) -> None:
    """A run spec's ``train.threads``, unless ``$EDH_THREADS`` is set (``--threads`` exports it: both win)."""
    if threads is not None and not os.environ.get(THREADS_ENV, "").strip():
        apply_threads(threads)
