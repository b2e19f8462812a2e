"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (no websocket package).

Chromium reads JSON commands, each ended by a NUL byte, from file descriptor 3 and writes replies and
events to file descriptor 4. `Browser` opens a page, evaluates JavaScript and sets the files of an
``<input type=file>``: what a test needs to use a page as a person would.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Browser:
    """Headless Chromium driven over a pipe; use as a context manager."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser_read, self._write = os.pipe()  # we write commands; chromium reads fd 3
        self._read, from_browser_write = os.pipe()  # chromium writes fd 4; we read
        command = [chromium, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        # the shell puts the pipe ends on fds 3 and 4, where chromium looks for them, then becomes chromium
        self._process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser_read} 4>&{from_browser_write}', "chromium", *command],
            pass_fds=(to_browser_read, from_browser_write), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._id = 0
        self.console: list[str] = []
        self.session = self._attach()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.command("Browser.close", session=False)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass

    def _message(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("chromium did not answer over the debugging pipe")
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe: {self._process.stderr.read()[-2000:]!r}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def command(self, method: str, params: dict[str, Any] | None = None, session: bool = True,
                timeout: float = 30.0) -> dict[str, Any]:
        """Send one command (to the page's session unless ``session`` is False) and return its result."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in reply["params"]["args"]))
            if reply.get("method") == "Runtime.exceptionThrown":
                self.console.append(str(reply["params"]["exceptionDetails"].get("text")))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _attach(self) -> str:
        targets = self.command("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        return self.command("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                            session=False)["sessionId"]

    def open(self, url: str) -> None:
        self.command("Runtime.enable")
        self.command("Page.enable")
        self.command("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self.command("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"the page never made this true: {expression}")

    def set_files(self, selector: str, files: list[Path]) -> None:
        """Choose ``files`` in the ``<input type=file>`` at ``selector`` (as a person picking them would)."""
        root = self.command("DOM.getDocument")["root"]["nodeId"]
        node = self.command("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.command("DOM.setFileInputFiles", {"nodeId": node, "files": [str(Path(f).resolve()) for f in files]})

    def screenshot(self, path: Path) -> Path:
        import base64

        data = self.command("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)
