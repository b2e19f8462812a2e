"""Serving: `edh serve` (dynamic batching) against the same model behind a plain FastAPI endpoint that
runs ``model(x)`` once per request, on a ResNet-18 digits run and a U-Net scenes run.

Both servers are separate processes on 127.0.0.1 with the same preprocessing (`Engine.decode`) and the
same answer (each head's ``prediction_json``); the only difference is batching. A client in this
process sends closed request loops (each of C workers sends its next request when the last is answered)
for ``--seconds`` at concurrency 1, 8 and 32, and reports requests/s and p50 / p99 latency.
Targets: at concurrency 32, edh >= 3x the plain endpoint's requests/s, with p99 under 2x the
single-request latency plus the batch timeout. Then 1,000 bad requests mixed into a concurrency-32
load: every bad one must get a 4xx, no 5xx, no good request lost.

Run: ``python bench/serve.py [--seconds 10] [--quick]``. The runs are trained first for a few steps
(the speed of serving does not depend on how well the model learned). Results:
``bench/results/serve.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, others_cores, print_table, write_json  # noqa: E402

CONCURRENCY = (1, 8, 32)
BATCH_TIMEOUT_MS = 5.0
MAX_BATCH = 32


def train_runs(root: Path) -> dict[str, Path]:
    """A ResNet-18 digits run and a U-Net scenes run, trained for a few steps."""
    from edh.train.runner import train_run
    from edh.workflows.demo import load_config

    runs = {}
    for name, config in (("resnet18-digits", "digits-resnet18.yaml"), ("unet-scenes", "unet-scenes.yaml")):
        folder = root / name
        if not (folder / "model.safetensors").is_file():
            spec = load_config(config, {"train.epochs": 1, "trainer.enable_progress_bar": False})
            train_run(spec, folder, max_steps=10, limit_val_batches=1)
        runs[name] = folder
    return runs


def sample_images(run: Path, count: int = 16) -> list[bytes]:
    """PNG bytes of ``count`` test images of the run's dataset."""
    from PIL import Image

    from edh.data.base import build_data
    from edh.utils.plots import to_pixels
    from edh.workflows.run import load_run

    loaded = load_run(run)
    bundle = build_data(loaded.spec.data.name, {**loaded.spec.data.options(), "num_test": count} if
                        loaded.spec.data.name == "scenes" else loaded.spec.data.options(), 0)
    files = []
    for index in range(count):
        image = bundle.test[index][0]
        pixels = (to_pixels(image[None], loaded.info.mean, loaded.info.std)[0] * 255).byte().permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


# ---- the plain endpoint (a subprocess: python bench/serve.py --plain RUN --port N) ------------------
def plain_app(run_dir: str):
    """FastAPI: POST /predict with JSON {"inputs": [{"image": b64}]}: decode, ``model(x)``, answer."""
    import torch
    from fastapi import FastAPI

    from edh.serve.engine import Engine, Options
    from edh.workflows.run import load_run

    engine = Engine(load_run(run_dir))
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict):  # a sync endpoint: FastAPI runs each request in its thread pool
        item = engine.decode("file", base64.b64decode(body["inputs"][0]["image"]), Options(), "input 0")
        try:
            with torch.inference_mode():
                outputs = engine.model(item.tensor)
            answer = {name: head.prediction_json(head.predict(outputs[name], input_size=tuple(item.tensor.shape[-2:])),
                                                 0, item.path, tuple(item.tensor.shape[-2:]))
                      for name, head in engine.tasks.items()}
        finally:
            item.release()
        return {"predictions": [{"heads": answer}]}

    return app


def start(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        found = re.search(r"http://([\d.]+):(\d+)", line)
        if found:
            return process, f"http://{found.group(1)}:{found.group(2)}"
        if process.poll() is not None:
            break
    raise RuntimeError(f"{' '.join(command)} did not start: {process.stderr.read()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


# ---- the client ----------------------------------------------------------------------------------
async def load(url: str, bodies: list[bytes], concurrency: int, seconds: float,
               bad: list[bytes] | None = None, bad_total: int = 0) -> dict:
    """C workers in closed loops for ``seconds`` (after 1 s of warm-up); with ``bad``, every third request
    is a bad one until ``bad_total`` were sent. The client is aiohttp: it shares the machine's cores with
    the server, and costs about a third of the CPU per request that httpx does."""
    import aiohttp

    latencies: list[float] = []
    statuses = {"good_ok": 0, "good_failed": 0, "bad_4xx": 0, "bad_5xx": 0, "bad_other": 0, "lost": 0}
    sent_bad = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        warm_until = time.perf_counter() + 1.0
        end = warm_until + seconds

        async def worker(index: int) -> None:
            nonlocal sent_bad
            count = index
            while time.perf_counter() < end or (bad is not None and sent_bad < bad_total):
                count += 1
                is_bad = bad is not None and sent_bad < bad_total and count % 3 == 0
                if is_bad:
                    sent_bad += 1
                body = bad[sent_bad % len(bad)] if is_bad else bodies[count % len(bodies)]
                begin = time.perf_counter()
                try:
                    async with client.post("/predict", data=body, headers={"content-type": "application/json"}) as answer:
                        await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    statuses["lost"] += 1
                    continue
                took = time.perf_counter() - begin
                if is_bad:
                    key = "bad_4xx" if 400 <= status < 500 else "bad_5xx" if status >= 500 else "bad_other"
                    statuses[key] += 1
                elif status == 200:
                    if begin >= warm_until:
                        latencies.append(took)
                    statuses["good_ok"] += 1
                else:
                    statuses["good_failed"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - max(started, warm_until)
    latencies.sort()
    return {"requests_per_s": len(latencies) / wall if wall > 0 else 0.0,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
            "answered": len(latencies), **statuses}


def batch_counts(url: str) -> tuple[int, int]:
    """``(batches, items)`` so far, from edh serve's ``/metadata`` ((0, 0) for the plain endpoint)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/metadata", timeout=30) as answer:
            counts = json.loads(answer.read())["batching"]
        return counts["batches"], counts["items"]
    except Exception:  # noqa: BLE001 - the plain endpoint has no /metadata
        return 0, 0


def bad_bodies(good: bytes) -> list[bytes]:
    import json

    return [b"{not json", json.dumps([1]).encode(), json.dumps({"inputs": []}).encode(),
            json.dumps({"inputs": [{"image": "%%%"}]}).encode(),
            json.dumps({"inputs": [{"image": base64.b64encode(b"not an image").decode()}]}).encode(),
            json.dumps({"inputs": [{"image": base64.b64encode(good[:30]).decode()}]}).encode(),
            json.dumps({"inputs": [{"text": "seven"}]}).encode(),
            json.dumps({"inputs": [{"image": base64.b64encode(good).decode()}], "top_k": -1}).encode()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per concurrency level")
    parser.add_argument("--quick", action="store_true", help="2 s per level, 100 bad requests: a smoke run")
    parser.add_argument("--only", nargs="+", choices=["resnet18-digits", "unet-scenes"], help="these models only")
    parser.add_argument("--levels", nargs="+", type=int, default=list(CONCURRENCY), help="concurrency levels")
    parser.add_argument("--runs", default=None, help="folder for the trained runs (default: a temporary one)")
    parser.add_argument("--plain", help=argparse.SUPPRESS)  # internal: serve RUN the plain way
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        import uvicorn

        from edh.serve.server import bind

        listener = bind("127.0.0.1", args.port)
        print(f"plain: http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
        uvicorn.Server(uvicorn.Config(plain_app(args.plain), log_level="warning")).run(sockets=[listener])
        return
    import json

    seconds, bad_total = (2.0, 100) if args.quick else (args.seconds, 1000)
    root = Path(args.runs or tempfile.mkdtemp(prefix="edh-serve-bench-"))
    runs = train_runs(root)
    env = dict(os.environ)
    rows, results = [], {"environment": environment(), "levels": {}, "bad": {}, "targets": {}}
    print(f"machine: other processes use {others_cores(1.0):.2f} cores before the bench", flush=True)
    for name, run in runs.items():
        if args.only and name not in args.only:
            continue
        images = sample_images(run)
        bodies = [json.dumps({"inputs": [{"image": base64.b64encode(png).decode()}]}).encode() for png in images]
        servers = {
            "edh serve": [sys.executable, "-m", "edh.cli", "serve", str(run), "--port", "0",
                          "--max-batch-size", str(MAX_BATCH), "--batch-timeout-ms", str(BATCH_TIMEOUT_MS)],
            "plain FastAPI": [sys.executable, __file__, "--plain", str(run)],
        }
        for server, command in servers.items():
            process, url = start(command, env)
            try:
                for concurrency in args.levels:
                    busy = others_cores(0.5)
                    before = batch_counts(url)
                    measured = asyncio.run(load(url, bodies, concurrency, seconds))
                    after = batch_counts(url)
                    batches = after[0] - before[0]
                    measured["mean_batch"] = (after[1] - before[1]) / batches if batches else None
                    results["levels"][f"{name}/{server}/c{concurrency}"] = {**measured, "others_cores": busy}
                    rows.append({"model": name, "server": server, "concurrency": concurrency,
                                 "req/s": f"{measured['requests_per_s']:.1f}", "p50 ms": f"{measured['p50_ms']:.1f}",
                                 "p99 ms": f"{measured['p99_ms']:.1f}", "failed": measured["good_failed"] + measured["lost"],
                                 "mean batch": f"{measured['mean_batch']:.1f}" if measured["mean_batch"] else "-",
                                 "others busy": f"{busy:.2f}"})
                    print(rows[-1], flush=True)
                if server == "edh serve":
                    mixed = asyncio.run(load(url, bodies, 32, 0.0, bad_bodies(images[0]), bad_total))
                    results["bad"][name] = mixed
                    print(f"{name}: {bad_total} bad requests mixed into concurrency 32: {mixed['bad_4xx']} got 4xx, "
                          f"{mixed['bad_5xx']} got 5xx, {mixed['bad_other']} other; good: {mixed['good_ok']} answered, "
                          f"{mixed['good_failed']} failed, {mixed['lost']} lost", flush=True)
            finally:
                stop(process)
        levels = results["levels"]
        if not {1, 32} <= set(args.levels):
            continue
        edh32, plain32 = levels[f"{name}/edh serve/c32"], levels[f"{name}/plain FastAPI/c32"]
        single = levels[f"{name}/edh serve/c1"]["p50_ms"]
        speedup = edh32["requests_per_s"] / plain32["requests_per_s"]
        p99_bound = 2 * single + BATCH_TIMEOUT_MS
        results["targets"][name] = {"speedup_c32": speedup, "target_speedup": 3.0, "p99_c32_ms": edh32["p99_ms"],
                                    "p50_c32_ms": edh32["p50_ms"], "p99_bound_ms": p99_bound}
    print_table(rows, ["model", "server", "concurrency", "req/s", "p50 ms", "p99 ms", "mean batch", "failed",
                       "others busy"],
                title="edh serve vs a plain FastAPI endpoint (closed loops, 127.0.0.1)")
    for name, target in results["targets"].items():
        bad = results["bad"][name]
        print(f"{name}: concurrency 32 edh serve / plain = {target['speedup_c32']:.2f}x (target >= 3.0x); "
              f"p99 {target['p99_c32_ms']:.1f} ms (p50 {target['p50_c32_ms']:.1f} ms) vs 2 x single-request p50 + "
              f"timeout = {target['p99_bound_ms']:.1f} ms; "
              f"bad requests: {bad['bad_4xx']} x 4xx, {bad['bad_5xx']} x 5xx, lost good: "
              f"{bad['good_failed'] + bad['lost']}")
    print(f"machine: other processes use {others_cores(1.0):.2f} cores after the bench")
    print(f"wrote {write_json('serve', results)}")


if __name__ == "__main__":
    main()
