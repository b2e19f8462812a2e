"""The HTTP side of ``edh serve``: a FastAPI app over an `Engine` and its `Batcher`.

Endpoints:
    ``POST /predict``: JSON ``{"inputs": [{"image": "<base64>"} | {"audio": ...} | {"text": "..."}],
    "top_k": 3, "picture": true}`` or a form: multipart ``files`` and ``text`` fields; ``top_k`` and
    ``picture`` may also be query parameters. Answer: ``{"run", "predictions": [{"name", "heads": {head:
    JSON}, "text", "picture"?}]}``.
    ``GET /health``: ``{"status": "ok"}``; 503 ``{"status": "draining"}`` once SIGTERM came.
    ``GET /metadata``: the run, input kind and size, heads and their classes, the role table, batching counts.
    ``GET /``: a page to upload a file or type a sentence.

Every bad request is a 4xx ``{"error": "<one sentence>"}``: 400 undecodable JSON or base64, 413 a body
over ``max_body_bytes`` or more than ``max_inputs`` inputs, 415 a file the run cannot read (or text
to a file run), 422 no inputs. A 500 means the batch's forward failed; the server goes on.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from edh.serve.batching import Batcher
from edh.serve.codecs import RequestError, flag, items_from_json, top_k_of
from edh.serve.engine import Engine, Options  # noqa: F401 - Engine: the type ServerState holds

log = logging.getLogger("edh")


class ServerState:
    """What the app shares: the engine, the batcher, the limits, and whether it is draining."""

    def __init__(self, engine: Engine, batcher: Batcher, max_body_bytes: int, max_inputs: int) -> None:
        self.engine, self.batcher = engine, batcher
        self.max_body_bytes, self.max_inputs = max_body_bytes, max_inputs
        self.draining = False
        self.arriving = 0  # requests being read and decoded (the batcher waits for them, up to its timeout)
        self.answered = {"2xx": 0, "4xx": 0, "5xx": 0}


def create_app(run: Any, max_batch_size: int = 16, batch_timeout_ms: float = 5.0, max_body_bytes: int = 16 << 20,
               max_inputs: int = 64, **engine: Any):
    """The ``edh serve`` app for ``run`` (a run folder or a loaded `Run`): mount it in your own ASGI
    server, or test it with FastAPI's ``TestClient``. ``engine``: `Engine` options (``backend``,
    ``beam_size``, ``settings``, ``allow_changed_data``). The app's ``state.server`` is its `ServerState`."""
    from edh.serve.engine import Engine
    from edh.workflows.run import Run, load_run

    engine_ = Engine(run if isinstance(run, Run) else load_run(run), **engine)
    engine_.warm_up()
    state = ServerState(engine_, None, max_body_bytes, max_inputs)
    state.batcher = Batcher(engine_.predict, max_batch_size, batch_timeout_ms, arriving=lambda: state.arriving)
    return make_app(state)


def make_app(state: ServerState):
    """The FastAPI app (routes above) for ``state``; the batcher is closed when the app shuts down."""

    @asynccontextmanager
    async def lifespan(app):
        yield
        state.draining = True
        await asyncio.to_thread(state.batcher.close)
        state.engine.close()

    app = FastAPI(title="edh serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state

    def error(status: int, message: str) -> JSONResponse:
        state.answered["4xx" if status < 500 else "5xx"] += 1
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, caught: HTTPException):  # 404, 405: the same {"error"} shape
        return error(caught.status_code, f"{request.method} {request.url.path}: {caught.detail}; the endpoints are "
                     "POST /predict, GET /health, GET /metadata, GET /")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, caught: RequestValidationError):
        return error(422, f"{request.method} {request.url.path}: {caught.errors()}")

    @app.get("/health")
    async def health():
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata():
        counts = state.batcher.counts
        return {**state.engine.metadata(),
                "batching": {"max_batch_size": state.batcher.max_batch_size, "batch_timeout_ms": state.batcher.timeout_ms,
                             "batches": counts.batches, "items": counts.items, "largest_batch": counts.largest_batch},
                "answered": dict(state.answered)}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (resources.files("edh.serve") / "page.html").read_text(encoding="utf-8")

    @app.post("/predict")
    async def predict(request: Request):
        # draining: a request that reached the server is still answered (uvicorn takes no new connections)
        state.arriving += 1  # read and decoded, not queued yet: a batch waiting for it may wait
        try:
            items = await decode_request(request, state)
        except RequestError as caught:
            state.arriving -= 1
            return error(caught.status, str(caught))
        try:
            answer = state.batcher.enqueue(items)
        finally:
            state.arriving -= 1
        try:
            predictions = await answer
        except Exception as caught:  # noqa: BLE001 - the batch failed: a 500 for its requests, the server goes on
            log.exception("edh serve: a batch failed")
            return error(500, f"the prediction failed: {type(caught).__name__}: {caught}")
        state.answered["2xx"] += 1
        return JSONResponse({"run": state.engine.run.path.name, "predictions": predictions})  # plain JSON values

    return app


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with a 413 past ``limit`` bytes (by Content-Length, else while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise RequestError(413, f"the body is {int(declared)} bytes; this server takes at most {limit} "
                                   "(edh serve --max-body-mb)")
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r} is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over {limit} bytes, the most this server takes (edh serve --max-body-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_request(request: Any, state: ServerState) -> list:
    """The request's inputs as `Item`s (decoded in a worker thread); a `RequestError` for anything wrong."""
    engine = state.engine
    body = await read_body(request, state.max_body_bytes)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query = request.query_params
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raw, options = await multipart_items(request, body)
    elif kind in ("application/json", "") or kind.endswith("+json"):
        raw, options = items_from_json(body, engine.takes_text)
    else:
        raise RequestError(415, f"Content-Type {kind!r}: send application/json ({{\"inputs\": [...]}}), "
                           "multipart/form-data (files, text fields) or a url-encoded form (text fields)")
    top_k = top_k_of(options.get("top_k", query.get("top_k")))
    picture = flag(options.get("picture", query.get("picture", False)))
    if len(raw) > state.max_inputs:
        raise RequestError(413, f"{len(raw)} inputs in one request; this server takes at most {state.max_inputs} "
                           "(edh serve --max-inputs)")
    wanted = Options(top_k, picture)

    def decode_all():
        items = []
        try:
            for index, (what, payload, name) in enumerate(raw):
                items.append(engine.decode(what, payload, wanted, name or f"input {index}"))
        except BaseException:
            for item in items:
                item.release()
            raise
        return items

    return await asyncio.to_thread(decode_all)


async def multipart_items(request: Any, body: bytes) -> tuple[list[tuple[str, Any, str]], dict[str, Any]]:
    """``files`` parts (any file part, in fact) and ``text`` fields of a multipart body; ``top_k`` and
    ``picture`` fields as options."""
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except Exception as caught:  # noqa: BLE001 - python-multipart's errors: a malformed body
        raise RequestError(400, f"the multipart body cannot be read: {caught}") from None
    items: list[tuple[str, Any, str]] = []
    options: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            items.append(("file", await value.read(), value.filename or key))
        elif key == "text":
            items.append(("text", value, f"text {len(items)}"))
        elif key in ("top_k", "picture"):
            options[key] = value
        else:
            raise RequestError(400, f"unknown form field {key!r}: send files, text, top_k or picture")
    await form.close()
    if not items:
        raise RequestError(422, "no inputs: the form has no files and no text fields")
    return items, options
