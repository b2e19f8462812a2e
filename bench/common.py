"""Timing helpers shared by the family benchmarks (classification, segmentation, detection, translation).

The machine is noisy, so contenders are never timed one after another: every repeat runs each
contender once, round-robin (the starting contender rotates), and a contender's score is the median
over repeats. A benchmark builds `Contender`s, calls `measure`, then `print_table` / `write_json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Contender:
    """One thing to time.

    Attributes:
        name: row label, e.g. ``"timm channels_last"``.
        step: runs one unit of work (a forward, a train step, a generation); its result is ignored.
        items: what one ``step`` processes (images, tokens), to report items/s.
        info: free-form settings reported beside the result (memory format, dtype...).
    """

    name: str
    step: Callable[[], Any]
    items: int
    info: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int = 0) -> None:
    """Seed Python and torch: call before building each model so every run builds the same weights."""
    random.seed(seed)
    torch.manual_seed(seed)


def measure(contenders: list[Contender], repeats: int = 5, calls: int = 1, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per ``step`` of each contender, one sample per repeat, contenders interleaved.

    Args:
        contenders: what to time.
        repeats: samples per contender; round ``r`` starts at contender ``r % len(contenders)``.
        calls: ``step`` calls per sample (the sample is their mean).
        warmup: untimed calls of each contender before timing.

    Returns:
        ``{name: [seconds per step, one per repeat]}``.
    """
    for contender in contenders:
        for _ in range(warmup):
            contender.step()
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(repeats):
        start = r % len(contenders)
        for contender in contenders[start:] + contenders[:start]:
            begin = time.perf_counter()
            for _ in range(calls):
                contender.step()
            samples[contender.name].append((time.perf_counter() - begin) / calls)
    return samples


def summarize(contenders: list[Contender], samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One row per contender: median items/s, median ms per step and the spread (min..max items/s)."""
    rows = []
    for c in contenders:
        times = samples[c.name]
        rate = [c.items / t for t in times]
        rows.append({"name": c.name, "items_per_s": c.items / statistics.median(times),
                     "ms_per_step": 1000 * statistics.median(times), "min_items_per_s": min(rate),
                     "max_items_per_s": max(rate), "repeats": len(times), **c.info})
    return rows


def format_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> str:
    """A plain-text table of ``columns`` from ``rows``; floats get 1 decimal."""
    cells = [[f"{row.get(col, ''):.1f}" if isinstance(row.get(col), float) else str(row.get(col, ""))
              for col in columns] for row in rows]
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
              for line in cells]
    return "\n".join(([title] if title else []) + lines)


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    print(format_table(rows, columns, title), flush=True)


def ratio(name: str, value: float, target: float | None = None) -> dict[str, Any]:
    """A named ratio with its target; ``met`` is None without a target."""
    return {"name": name, "value": value, "target": target, "met": None if target is None else value >= target}


def format_ratio(r: dict[str, Any]) -> str:
    verdict = "" if r["target"] is None else f"(target >= {r['target']:.2f}: {'met' if r['met'] else 'MISSED'})"
    return f"{r['name']:<48s} {r['value']:6.3f}  {verdict}"


def environment() -> dict[str, Any]:
    """What the numbers depend on: versions, threads, CPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``bench/results/<name>.json`` (git-ignored) and return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def base_parser(description: str, repeats: int = 7) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--repeats``, ``--quick``, ``--threads``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats, help="samples per contender (median reported)")
    parser.add_argument("--quick", action="store_true", help="few repeats, one call each: a smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return parser


def apply_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
