"""`edh serve` as a process: it prints its address, SIGTERM drains the requests in flight and exits 0,
and its page works in a real headless browser (Debian's chromium over the DevTools pipe): a person
chooses a file, presses Send and sees the answer and its picture."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_run_spec  # noqa: E402

pytest.importorskip("fastapi")
EDH = [sys.executable, "-m", "edh.cli"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    folder = tmp_path_factory.mktemp("serve-process") / "classifier"
    return train_run(parse_run_spec(tiny_run_spec(epochs=1)), folder, max_steps=2, limit_val_batches=1).path


class Server:
    """``edh serve RUN --port 0 ...`` in a subprocess; ``url`` once it listens."""

    def __init__(self, run_dir: Path, *options: str) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([*EDH, "serve", str(run_dir), "--port", "0", *options], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        found = re.search(r"http://([\d.]+):(\d+)", line)
        if not found:
            self.process.kill()
            raise AssertionError(f"edh serve printed {line!r}; stderr: {self.process.stderr.read()[-3000:]}")
        self.url = f"http://{found.group(1)}:{found.group(2)}"

    def post(self, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(f"{self.url}/predict", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=60)
        return self.process.returncode, stderr


def _digit(path: Path, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
    return path


def test_sigterm_answers_the_requests_in_flight_then_exits_0(run_dir, tmp_path):
    import base64

    server = Server(run_dir, "--max-batch-size", "1")  # one forward per request: a queue builds up
    image = base64.b64encode(_digit(tmp_path / "d.png").read_bytes()).decode()
    count, inputs = 32, 16
    answers: list = []
    first = threading.Event()

    def ask():
        status, body = server.post({"inputs": [{"image": image}] * inputs})
        answers.append((status, body, time.monotonic()))
        first.set()

    try:
        threads = [threading.Thread(target=ask) for _ in range(count)]
        for thread in threads:
            thread.start()
        assert first.wait(60)  # the first answer is out: the other requests are still being worked on
        signalled = time.monotonic()
        code, stderr = server.stop()  # SIGTERM while requests are still queued
        for thread in threads:
            thread.join(30)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert code == 0, stderr[-3000:]
    assert [status for status, _, _ in answers] == [200] * count, [a[:2] for a in answers if a[0] != 200][:3]
    assert all(len(body["predictions"]) == inputs for _, body, _ in answers)
    assert any(at > signalled for _, _, at in answers), "every request was answered before SIGTERM: nothing drained"
    assert f"stopped after {inputs * count} inputs" in stderr and f"{count} answered" in stderr, stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed (CI installs it)")
def test_the_page_predicts_an_uploaded_file_in_a_browser(run_dir, tmp_path):
    assert CHROMIUM, "chromium is missing: .ci/run installs it with apt-get"
    from cdp import Browser

    server = Server(run_dir)
    try:
        with Browser(CHROMIUM, tmp_path / "profile") as browser:
            browser.open(f"{server.url}/")
            model = browser.wait_for("document.getElementById('model').textContent.startsWith('run:') && "
                                     "document.getElementById('model').textContent")
            assert "classifier" in model and "label (classification)" in model
            browser.evaluate("document.getElementById('send').click()")  # nothing chosen yet: the page says so
            assert "Choose an image file first" in browser.wait_for("document.getElementById('error').textContent")
            browser.set_files("#file", [_digit(tmp_path / "seven.png", seed=7)])
            browser.evaluate("document.getElementById('send').click()")
            summary = browser.wait_for("document.getElementById('summary').textContent")
            assert re.match(r"seven\.png: label: \d \d\.\d{3}", summary), summary
            assert browser.evaluate("document.getElementById('picture').src").startswith("data:image/png;base64,")
            assert browser.wait_for("document.getElementById('picture').complete && "
                                    "document.getElementById('picture').naturalWidth") >= 64
            assert browser.evaluate("document.getElementById('error').textContent") == ""
            shots = Path(os.environ.get("EDH_TEST_OUTPUT", "test-output"))
            shots.mkdir(parents=True, exist_ok=True)
            browser.screenshot(shots / "serve_page.png")
            assert browser.console == [], browser.console
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr[-3000:]
