"""`Batcher`: dynamic batching of requests for one worker thread.

Requests go into a queue; the worker takes the first, waits up to ``timeout_ms`` for more (up to
``max_batch_size`` items), runs ``predict(items)`` once for them and resolves each request's asyncio
future on its event loop (``loop.call_soon_threadsafe``). An exception in a batch fails the requests
of that batch only; the worker keeps going. ``close`` lets queued requests finish, then stops.

``arriving`` (optional) counts the requests the server is still reading: when the queue is empty and
nothing is arriving, waiting longer cannot fill the batch, so it runs at once. A lone request then
pays no timeout, while under load the batch still gathers what is on its way.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


POLL_SECONDS = 0.0005  # how often a waiting batch looks at ``arriving`` again


@dataclass
class _Request:
    items: list[Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class BatchCounts:
    """What the batcher has done: forwards run, items predicted, the largest forward."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Batcher:
    """Gathers the items of concurrent requests into batches for ``predict(items) -> results``."""

    def __init__(self, predict: Callable[[list[Any]], list[Any]], max_batch_size: int = 16, timeout_ms: float = 5.0,
                 arriving: Callable[[], int] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"--max-batch-size is a number of inputs per forward (at least 1), got {max_batch_size}")
        self.predict, self.max_batch_size, self.timeout_ms = predict, max_batch_size, timeout_ms
        self.arriving = arriving
        self.counts = BatchCounts()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="edh-serve-batcher", daemon=True)
        self._thread.start()

    def enqueue(self, items: list[Any]) -> asyncio.Future:
        """Queue ``items`` (call from the event loop); the future gets their results, in order."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Request(list(items), future, loop))
        return future

    async def submit(self, items: list[Any]) -> list[Any]:
        """The results for ``items`` (in order), once a batch holding them has run."""
        return await self.enqueue(items)

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued requests, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        requests, size, stop = [first], len(first.items), False
        deadline = time.monotonic() + self.timeout_ms / 1000.0
        while size < self.max_batch_size:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    request = self._queue.get_nowait()  # the wait is over: only what is queued already
                elif self.arriving is None:
                    request = self._queue.get(timeout=left)
                elif self._queue.empty() and not self.arriving():
                    break  # nothing queued and nothing on its way: waiting cannot fill the batch
                else:
                    request = self._queue.get(timeout=min(left, POLL_SECONDS))
            except queue.Empty:
                if left <= 0 or self.arriving is None:
                    break
                continue
            if request is None:
                stop = True
                break
            requests.append(request)
            size += len(request.items)
        return requests, stop

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            requests, stop = self._gather(first)
            self._run(requests)
            if stop:
                while not self._queue.empty():  # drain what came before the stop
                    request = self._queue.get_nowait()
                    if request is not None:
                        self._run([request])
                return

    def _run(self, requests: list[_Request]) -> None:
        items = [item for request in requests for item in request.items]
        try:
            results = self.predict(items)
            error = None
        except Exception as caught:  # noqa: BLE001 - the batch's requests get a 500, the worker goes on
            results, error = [], caught
        with self.counts.lock:
            self.counts.batches += 1
            self.counts.items += len(items)
            self.counts.largest_batch = max(self.counts.largest_batch, len(items))
        start = 0
        for request in requests:
            share = results[start:start + len(request.items)]
            start += len(request.items)
            request.loop.call_soon_threadsafe(_resolve, request.future, share, error)


def _resolve(future: asyncio.Future, results: list[Any], error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(results)
