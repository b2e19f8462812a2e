"""The demo report loads in a real headless browser (Debian's chromium): every image renders and the
console stays clean. A screenshot is kept in test-output/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_cli import edh

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(tmp_path, *args):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed (CI installs it)")
def test_demo_report_renders_in_a_browser(tmp_path):
    assert CHROMIUM, "chromium is missing: .ci/run installs it with apt-get"
    out = tmp_path / "demo"
    edh("demo", "--quick", "--out", out)  # every demo, a few steps each: each family's pictures must render
    page = out / "report.html"
    assert page.is_file() and (out / "report.md").is_file()
    dom = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = int(re.search(r'data-images="(\d+)"', dom.stdout).group(1))
    broken = int(re.search(r'data-broken-images="(\d+)"', dom.stdout).group(1))
    from edh.workflows.demo import DEMOS

    assert images >= 2 * len(DEMOS) and broken == 0  # at least a diagram and a picture per model
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    shots = Path(os.environ.get("EDH_TEST_OUTPUT", "test-output"))
    shots.mkdir(parents=True, exist_ok=True)
    shot = _chromium(tmp_path, f"--screenshot={shots.resolve() / 'demo_report.png'}", "--window-size=1280,2400",
                     page.as_uri())
    assert shot.returncode == 0 and (shots / "demo_report.png").stat().st_size > 10_000
