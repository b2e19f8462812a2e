"""Pick an implementation of a hot op by timing the candidates once, on the shapes and CPU at hand.

Which kernel is fastest for a decoding step depends on the machine: the oneDNN-packed linear
(`edh.layers.packed`) is 1.2-3x faster than ``F.linear`` for skinny products on an AMD Zen 4, yet
slower than ``F.linear`` (MKL) on an Intel Xeon with AMX for the translation benchmark's shapes. So
nothing here is fixed per CPU family: the first call for a shape class runs every candidate a few
times (a millisecond or so; twice for a candidate slower than `SLOW_S`) and keeps the fastest for the
rest of the process. Likewise a 3x3 conv's weight gradient in channels_last is 2.3x slower than from
contiguous tensors on an AVX2-only AMD EPYC (`edh.layers.conv_grad`).

``$EDH_<OP>`` forces a candidate (``EDH_LINEAR=packed`` or ``plain``; ``auto`` or unset: measure),
for tests and debugging. Decisions are logged at debug level (logger ``edh``) and can be read with
`decisions`.

Example:
    >>> name = choose("linear", ("fp32", 8, 256, 768), {"packed": run_packed, "plain": run_plain})
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Hashable

log = logging.getLogger("edh")

_DECISIONS: dict[tuple[str, Hashable], str] = {}  # (op, shape class) -> the chosen candidate's name
_EPOCH = [0]  # how many times `reset` ran: callers that keep decisions of their own compare it (`epoch`)
_VARIABLES: dict[str, str] = {}  # op -> the name of its environment variable
TRIALS = 3  # timed runs per candidate, after one warm-up run; the fastest run counts
SLOW_S = 0.05  # a candidate whose warm-up run takes longer is timed once (a conv's weight gradient: 0.3-0.7 s)


def forced(op: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """The candidate ``$EDH_<OP>`` names, None when unset or ``auto``; a ValueError for an unknown name.
    Read at every call (tests and users may set it at any time), so the unset case is one lookup."""
    variable = _VARIABLES.get(op) or _VARIABLES.setdefault(op, f"EDH_{op.upper()}")
    value = os.environ.get(variable)
    if not value:
        return None
    value = value.strip().lower()
    if value in ("", "auto"):
        return None
    if value not in candidates:
        raise ValueError(f"${variable}={value!r} is not one of {', '.join(candidates)} or auto; "
                         f"set it to one of those or unset it")
    return value


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()  # warm-up: packing a weight, first-touch allocations
    best = float("inf")
    for _ in range(1 if time.perf_counter() - start > SLOW_S else TRIALS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def choose(op: str, shape_class: Hashable, candidates: dict[str, Callable[[], object]]) -> str:
    """The name of the fastest of ``candidates`` for ``op`` on ``shape_class``, timed at the first call.

    Args:
        op: the op's name (``"linear"``); also names the environment variable ``$EDH_<OP>``.
        shape_class: what the decision depends on (dtype, rows bucket, weight shape...).
        candidates: name -> a call that runs that implementation once on representative inputs.
            Only called at the first decision for a ``(op, shape_class)``.
    """
    choice = forced(op, tuple(candidates))
    if choice is not None:
        return choice
    key = (op, shape_class)
    choice = _DECISIONS.get(key)
    if choice is None:
        times = {name: _seconds(run) for name, run in candidates.items()}
        choice = min(times, key=times.get)
        _DECISIONS[key] = choice
        log.debug("%s %s: %s (%s)", op, shape_class, choice,
                  ", ".join(f"{name} {seconds * 1e6:.0f} us" for name, seconds in times.items()))
    return choice


def rows_bucket(rows: int) -> int:
    """``rows`` rounded up to a power of two: the rows part of a shape class (8 rows and 7 decide alike)."""
    return 1 << (max(1, rows) - 1).bit_length()


def decisions() -> dict[tuple[str, Hashable], str]:
    """A copy of the decisions made so far in this process: ``(op, shape class) -> candidate``."""
    return dict(_DECISIONS)


def pin(decisions: dict[tuple[str, Hashable], str]) -> None:
    """Set decisions by hand (``(op, shape class) -> candidate``, as `decisions` gives them): a benchmark
    comparing fixed choices. Callers that keep decisions of their own take these at their next call."""
    _DECISIONS.update(decisions)
    _EPOCH[0] += 1


def epoch() -> int:
    """Changes at every `reset`: a caller that keeps decisions of its own (per weight, say) drops them then."""
    return _EPOCH[0]


def reset() -> None:
    """Forget every decision (the next call measures again): after changing threads, in tests."""
    _DECISIONS.clear()
    _EPOCH[0] += 1
