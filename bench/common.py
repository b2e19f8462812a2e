"""Timing helpers shared by the family benchmarks (classification, segmentation, detection, translation).

The machine is shared and noisy, so contenders are never timed one after another: every round runs
each contender once, round-robin (the starting contender rotates); samples taken while other
processes were busy (from /proc/stat) are marked noisy and more rounds are run; a contender's score
is the median of its quiet samples. A benchmark builds `Contender`s, calls `measure`, then
`summarize`, `print_table` and `write_json`.
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
import torch.nn.functional as F

from edh.layers.conv_grad import to_channels_last_for_training
from edh.utils import cpu
from edh.utils.perf import autocast, to_channels_last

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


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, incl. steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    except (OSError, ValueError):
        return float("nan")
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds(children: bool = False) -> float:
    """CPU seconds of this process (and, with ``children``, of its finished children: data-loader workers)."""
    times = os.times()
    return times.user + times.system + (times.children_user + times.children_system if children else 0.0)


def others_cores(window: float = 0.2) -> float:
    """CPU (in cores) that other processes use over the next ``window`` seconds (we sleep meanwhile)."""
    busy, own = machine_busy_seconds(), own_cpu_seconds()
    time.sleep(window)
    return (machine_busy_seconds() - busy - (own_cpu_seconds() - own)) / window


def wait_for_quiet(limit: float, timeout: float) -> float:
    """Sleep until other processes use at most ``limit`` cores, or ``timeout`` s pass; seconds waited."""
    begin = time.perf_counter()
    while time.perf_counter() - begin < timeout and others_cores() > limit:
        pass
    return time.perf_counter() - begin


@dataclass
class Sample:
    """One timed sample: ``seconds`` per step, and the CPU (in cores) other processes used meanwhile."""

    seconds: float
    others: float

    def quiet(self, limit: float) -> bool:
        return not self.others > limit  # NaN (no /proc/stat) counts as quiet


def measure(contenders: list[Contender], repeats: int = 5, calls: int = 1, warmup: int = 1, quiet_cores: float = 0.25,
            max_rounds: int | None = None, max_wait: float = 0.0) -> dict[str, list[Sample]]:
    """Time each contender, one sample per round, contenders interleaved round-robin.

    The machine is shared: before each sample it waits (up to ``max_wait`` seconds in all) until
    other processes are quiet; a sample during which they used more than ``quiet_cores`` cores is
    kept but marked noisy. After ``repeats`` rounds, more rounds run while some contender has fewer
    than ``repeats`` quiet samples and waiting time is left, up to ``max_rounds`` (default
    ``3 * repeats``).

    Args:
        contenders: what to time.
        repeats: quiet samples wanted per contender; round ``r`` starts at contender ``r % len``.
        calls: ``step`` calls per sample (the sample is their mean).
        warmup: untimed calls of each contender before timing.
        quiet_cores: CPU use by other processes (in cores) above which a sample is noisy.
        max_rounds: cap on rounds.
        max_wait: seconds this call may spend in all waiting for other processes to go quiet.

    Returns:
        ``{name: [Sample, ...]}`` in time order.
    """
    for contender in contenders:
        for _ in range(warmup):
            contender.step()
    samples: dict[str, list[Sample]] = {c.name: [] for c in contenders}
    quiet = lambda name: sum(s.quiet(quiet_cores) for s in samples[name])  # noqa: E731
    for r in range(max_rounds or 3 * repeats):
        if r >= repeats and (max_wait <= 0 or all(quiet(c.name) >= repeats for c in contenders)):
            break  # enough quiet samples, or no waiting left: more noisy rounds would not help
        start = r % len(contenders)
        for contender in contenders[start:] + contenders[:start]:
            max_wait -= wait_for_quiet(quiet_cores, max_wait) if max_wait > 0 else 0.0
            busy, own, begin = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
            for _ in range(calls):
                contender.step()
            wall = time.perf_counter() - begin
            others = (machine_busy_seconds() - busy - (own_cpu_seconds() - own)) / wall
            samples[contender.name].append(Sample(wall / calls, others))
    return samples


def summarize(contenders: list[Contender], samples: dict[str, list[Sample]],
              quiet_cores: float = 0.25) -> list[dict[str, Any]]:
    """One row per contender: median items/s and ms per step, min/max (= best) items/s, samples used.

    The median is over quiet samples when there are at least 3 (or all samples are quiet), else
    over all samples (``noisy`` is then True: rerun on a quieter machine).
    """
    rows = []
    for c in contenders:
        quiet = [s.seconds for s in samples[c.name] if s.quiet(quiet_cores)]
        noisy = len(quiet) < min(3, len(samples[c.name]))
        times = [s.seconds for s in samples[c.name]] if noisy else quiet
        rows.append({"name": c.name, "items_per_s": c.items / statistics.median(times),
                     "ms_per_step": 1000 * statistics.median(times),
                     "best_items_per_s": c.items / min(s.seconds for s in samples[c.name]),
                     "min_items_per_s": c.items / max(s.seconds for s in samples[c.name]),
                     "max_items_per_s": c.items / min(s.seconds for s in samples[c.name]),
                     "quiet_samples": f"{len(quiet)}/{len(samples[c.name])}", "noisy": noisy,
                     "others_cores": [round(s.others, 2) for s in samples[c.name]],
                     "items_per_s_all": [round(c.items / s.seconds, 2) for s in samples[c.name]], **c.info})
    return rows


def format_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> str:
    """A plain-text table of ``columns`` from ``rows``; floats get 1 decimal."""
    cells = [[f"{row.get(col, ''):.1f}" if isinstance(row.get(col), float)
              else "-" if row.get(col, "") is None else str(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
              for line in cells]
    return "\n".join(([title] if title else []) + lines)


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    print(format_table(rows, columns, title), flush=True)


def ratio(name: str, value: float, target: float | None = None, best: float | None = None) -> dict[str, Any]:
    """A named ratio of medians (``value``), optionally of best samples (``best``), with its target."""
    return {"name": name, "value": value, "best": best, "target": target,
            "met": None if target is None else value >= target}


def format_ratio(r: dict[str, Any]) -> str:
    best = "" if r.get("best") is None else f"  (best-sample ratio {r['best']:.3f})"
    verdict = "" if r["target"] is None else f"  target >= {r['target']:.2f}: {'met' if r['met'] else 'MISSED'}"
    return f"{r['name']:<62s} {r['value']:6.3f}{verdict}{best}"


def noisy_warning(rows: list[dict[str, Any]]) -> str | None:
    """A warning naming the rows whose median had to include noisy samples, or None."""
    noisy = [row["name"] for row in rows if row.get("noisy")]
    return f"WARNING: other processes were busy; medians of all samples for: {', '.join(noisy)}" if noisy else None


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "bf16", "sve", "sve2")
"""The CPU features the bf16 / fp32 numbers hinge on (x86: AVX2, AVX-512, AVX-512-BF16, AMX; ARM: NEON
("asimd"), BF16, SVE), as ``/proc/cpuinfo`` spells them."""


def cpu_info() -> dict[str, Any]:
    """The CPU model and which of `CPU_FLAGS` it has, from ``/proc/cpuinfo`` (Linux; model only elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in (platform.processor(), platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags]}


def torch_build() -> dict[str, Any]:
    """The oneDNN (MKL-DNN) and MKL versions torch was built with, parsed from ``torch.__config__.show()``."""
    import re

    shown = torch.__config__.show()
    onednn = re.search(r"MKL-DNN v([\w.]+)", shown)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", shown)
    capability = re.search(r"CPU capability usage: (\w+)", shown)
    return {"onednn": onednn.group(1) if onednn and torch.backends.mkldnn.is_available() else None,
            "mkl": mkl.group(1) if mkl and torch.backends.mkl.is_available() else None,
            "cpu_capability": capability.group(1) if capability else None}


def environment() -> dict[str, Any]:
    """What the numbers depend on: versions (torch, oneDNN, MKL), threads, CPU model and flags."""
    return {"torch": torch.__version__, **torch_build(), "threads": torch.get_num_threads(), **cpu_info(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.5) -> float | None:
    """The machine's attainable matmul rate in GFLOP/s for ``dtype``, at the current thread count.

    Times square ``size`` x ``size`` matmuls (2 * size**3 FLOPs each, oneDNN / MKL underneath) for about
    ``seconds`` and keeps the best call, so a busy moment lowers the figure less than a mean would. The
    "% of peak" figures divide a model's achieved GFLOP/s by this; for bf16 it is the AMX / AVX-512-BF16
    rate where the CPU has them, so a bf16 forward is judged against what bf16 can reach here. None for
    bf16 on a CPU without bfloat16 instructions (AVX2 only: `edh.utils.cpu.native_bf16`): PyTorch
    emulates it there (a 1024 x 1024 bf16 matmul ran at 1 GFLOP/s on an AMD EPYC with AVX2), so no
    bf16 peak exists to judge by.
    """
    if dtype == torch.bfloat16 and not cpu.native_bf16():
        return None
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    with torch.inference_mode():
        for _ in range(3):
            torch.mm(a, b)
        best, end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def stream_gb_per_s(mib: int = 256, repeats: int = 5) -> float:
    """The machine's memory read bandwidth in GB/s: the best of ``repeats`` sums over a ``mib`` MiB
    tensor (far larger than any cache), at the current thread count."""
    data = torch.ones(mib * 2**20 // 4)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            data.sum()
            best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best / 1e9


def hot_and_cold_us(run: Callable[[], Any], repeats: int = 31, flush_mib: int = 64) -> tuple[float, float]:
    """Median microseconds of ``run()`` called back to back (its data in cache: hot) and right after
    writing ``flush_mib`` MiB (its data evicted to memory: cold, as each weight of a decoding step is by
    the time the next step reads it again, once the step reads more than the caches hold)."""
    flush = torch.zeros(flush_mib * 2**20 // 4)
    hot, cold = [], []
    for _ in range(3):
        run()
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        hot.append(time.perf_counter() - start)
    for _ in range(repeats):
        flush.add_(1.0)
        start = time.perf_counter()
        run()
        cold.append(time.perf_counter() - start)
    return statistics.median(hot) * 1e6, statistics.median(cold) * 1e6


def percent_of_peak(flops: float, seconds: float, peak_gflops: float) -> float:
    """What share (%) of ``peak_gflops`` a step doing ``flops`` FLOPs in ``seconds`` achieves."""
    return 100 * flops / seconds / 1e9 / peak_gflops


def forward_flops(model: torch.nn.Module, *inputs: Any) -> int:
    """FLOPs of one ``model(*inputs)`` forward, counted by ``torch.utils.flop_counter`` (2 per multiply-add;
    convolutions and matmuls, which is where a CNN's time goes)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(*inputs)
    return counter.get_total_flops()


def max_abs_diff(a: Any, b: Any) -> float:
    """The largest ``|a - b|`` over two outputs (tensors, or dicts / lists / tuples of them), in float32."""
    if isinstance(a, torch.Tensor):
        return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict):
        return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return 0.0


def check_bf16_agrees(name: str, output: torch.Tensor, reference: torch.Tensor, tolerance: float = 0.1) -> float:
    """Assert a bf16 run's ``output`` matches its fp32 ``reference`` within bf16 tolerance, before timing.

    The bound is relative to the reference's spread (``max|diff| <= tolerance * std``): bf16 keeps 8
    mantissa bits, so a whole network drifts by a few percent of its output scale, not more.

    Returns:
        ``max|diff| / std``, for the bench to print.
    """
    relative = max_abs_diff(output, reference) / max(reference.float().std().item(), 1e-12)
    if relative > tolerance:
        raise AssertionError(f"{name}: bf16 output differs from its fp32 run by {relative:.3f} x std "
                             f"(allowed {tolerance}); the bf16 path computes something else")
    return relative


def add_percent_of_peak(rows: list[dict[str, Any]], flops_per_item: float, peaks: dict[str, float]) -> None:
    """Give each row ``pct_of_peak``: its median items/s x ``flops_per_item`` as a % of the matmul peak of
    its precision (``peaks["bf16"]`` for rows whose ``dtype`` mentions bf16, else ``peaks["fp32"]``; see
    `matmul_peak_gflops`), and ``peak`` naming which."""
    for row in rows:
        precision = "bf16" if "bf16" in str(row.get("dtype", "")) else "fp32"
        peak = peaks.get(precision)
        row["pct_of_peak"] = percent_of_peak(flops_per_item * row["items_per_s"], 1.0, peak) if peak else None
        row["peak"] = precision if peak else f"{precision}: emulated"


def peaks_text(peaks: dict[str, float | None]) -> str:
    """``matmul peak fp32 155 GFLOP/s, bf16 1253 GFLOP/s`` (bf16 ``emulated`` where the CPU has no bf16
    instructions)."""
    return "matmul peak " + ", ".join(f"{name} {value:.0f} GFLOP/s" if value else f"{name} emulated (no bf16 "
                                      "instructions)" for name, value in peaks.items())


def add_bf16_rows_option(parser: argparse.ArgumentParser) -> None:
    """``--bf16-rows auto|on|off`` for a bench whose bf16 rows are slow where bf16 is emulated."""
    parser.add_argument("--bf16-rows", choices=("auto", "on", "off"), default="auto",
                        help="the bf16 rows (auto: only on a CPU with bfloat16 instructions; elsewhere PyTorch "
                             "emulates bf16, several times slower than fp32, and gives them no target)")


def bf16_rows(choice: str) -> bool:
    """Whether to run the bf16 rows for ``--bf16-rows`` ``choice`` on this CPU."""
    return choice == "on" or (choice == "auto" and cpu.native_bf16())


def bf16_target(target: float) -> float | None:
    """``target`` for a bf16-vs-bf16 ratio, or None on a CPU that emulates bf16 (AVX2 only): every
    contender is then several times slower than its fp32, and edh says so (`edh.utils.cpu`)."""
    return target if cpu.native_bf16() else None


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (Linux ``VmHWM``; NaN elsewhere)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident memory (Linux ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``bench/results/<name>.json`` (git-ignored) and return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def base_parser(description: str, repeats: int = 7) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--repeats``, ``--quick``, ``--threads``, ``--max-wait``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats, help="samples per contender (median reported)")
    parser.add_argument("--quick", action="store_true", help="few repeats, one call each: a smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--max-wait", type=float, default=600.0,
                        help="seconds each timing group may wait for other processes to go quiet")
    return parser


def forward_step(model: torch.nn.Module, images: torch.Tensor, channels_last: bool = False,
                 bf16: bool = False) -> Callable[[], Any]:
    """One inference forward (``torch.inference_mode``; channels_last input and bf16 autocast as asked)."""
    def step() -> Any:
        with torch.inference_mode(), autocast("cpu", enabled=bf16):
            return model(to_channels_last(images) if channels_last else images)

    return step


def with_environment(step: Callable[[], Any], variable: str, value: str) -> Callable[[], Any]:
    """``step`` run with ``$variable=value``: a fixed `edh.layers.dispatch` choice for an A/B row
    (``EDH_CONV_WEIGHT_GRAD=channels_last``, ``EDH_LINEAR=plain``), the variable restored after."""
    def run() -> Any:
        before = os.environ.get(variable)
        os.environ[variable] = value
        try:
            return step()
        finally:
            if before is None:
                del os.environ[variable]
            else:
                os.environ[variable] = before

    return run


def sgd_train_step(kind: str, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, head: str,
                   channels_last: bool) -> Callable[[], float]:
    """One train step (forward, cross-entropy, backward, SGD lr 0.01 momentum 0.9). An edh model takes
    its loss from its ``head``'s own loss (``ce`` term); a peer's output goes through ``F.cross_entropy``."""
    model.train()
    if channels_last:  # edh as `edh train` runs it with ``channels_last: true``
        model = to_channels_last_for_training(model) if kind == "edh" else model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        outputs = model(to_channels_last(images) if channels_last else images)
        if kind == "edh":  # edh's own loss path: the head's loss on the head's output
            loss = model.heads[head].loss(outputs[head], targets)["ce"]
        else:
            loss = F.cross_entropy(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def apply_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
