"""`serve`: run ``edh serve``'s app under uvicorn until SIGTERM / Ctrl-C, then drain.

On SIGTERM (or Ctrl-C) the server stops taking connections, ``/health`` answers 503 "draining" on
connections still open, requests in flight and in the batcher's queue are answered, and the process
exits 0 (uvicorn's graceful shutdown, ``DRAIN_SECONDS`` at most; a second Ctrl-C stops at once).
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from edh.workflows.run import Run

log = logging.getLogger("edh")

DRAIN_SECONDS = 30


def serve(run: Run, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 16,
          batch_timeout_ms: float = 5.0, max_body_bytes: int = 16 << 20, max_inputs: int = 64,
          backend: str = "torch", beam_size: int | None = None, settings: dict[str, Any] | None = None,
          allow_changed_data: bool = False, speed: list[str] | None = None) -> None:
    """Serve ``run`` on ``host:port`` (0: a free port) until SIGTERM or Ctrl-C; prints the address."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError("edh serve needs FastAPI and uvicorn: pip install 'edh[serve]'") from None
    from edh.serve.app import create_app

    app = create_app(run, max_batch_size, batch_timeout_ms, max_body_bytes, max_inputs,
                     backend=" + ".join([backend, *(speed or [])]), beam_size=beam_size, settings=settings,
                     allow_changed_data=allow_changed_data)
    state = app.state.server
    engine, batcher = state.engine, state.batcher
    listener = bind(host, port)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):  # a drained stop is a normal end (exit 0): uvicorn would re-raise it
                captured.clear()

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=DRAIN_SECONDS,
                            access_log=False, lifespan="on")
    bound_host, bound_port = listener.getsockname()[:2]
    print(f"edh serve: {run.path} on http://{bound_host}:{bound_port} ({engine.backend}; batches of up to "
          f"{max_batch_size}, waiting {batch_timeout_ms:g} ms for them); Ctrl-C or SIGTERM stops it", flush=True)
    DrainingServer(config).run(sockets=[listener])
    counts = batcher.counts
    print(f"edh serve: stopped after {counts.items} inputs in {counts.batches} batches "
          f"({state.answered['2xx']} answered, {state.answered['4xx']} refused, {state.answered['5xx']} failed)",
          file=sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}; another program may use the "
                      "port: give --port N (0 picks a free one)") from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener
