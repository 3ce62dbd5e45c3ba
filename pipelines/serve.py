"""`narvl-pipe serve`: a FastAPI app (run by uvicorn) answering `POST /predict` with a `Predictor`, batching
concurrent requests.

Requests are checked one by one (a body over `max_request_mb` refused with 413 before it is read in full, the image
decoded fully, the task's text fields present) before they join a batch, so a bad request is answered 4xx at once
and never reaches the model. The model is anything that distils or is distilled (`distill.loader.load_model`). Good requests wait in an asyncio queue; a batch
closes when it holds `max_batch_size` requests or `batch_timeout_ms` after its first one arrived, and runs in a worker
thread, so the event loop keeps accepting requests while the model works. One batch runs at a time.

    POST /predict   JSON {"image": "<base64>", "question": "..."}  or  multipart: file `image` + the task's text
                    fields (`Task.text_columns`)
                    -> {"task", "output", "prediction", "batch_size"}
    GET  /health    -> {"status": "ok", "task", "backend", "kind"}
    GET  /stats     -> requests answered, batches run, batch-size histogram, requests refused
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import Counter
from typing import Any, Callable, Iterator, Sequence

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import UnidentifiedImageError
from starlette.datastructures import UploadFile

from distill.errors import UserError
from distill.images import ImageLoadError, decode_base64
from pipelines.serve_config import ServeConfig
from student.predictor import Predictor

__all__ = ["ServeConfig", "BatchQueue", "BodyLimit", "create_app", "background_server", "serve"]


class BatchQueue:
    """Collects submitted items into batches and runs `run_batch(items) -> results` on each, one batch at a time.

    Args:
        run_batch: the model call; blocking, so it runs in a worker thread.
        max_batch_size: a batch closes when it holds this many items...
        timeout_s: ...or this long after its first item arrived.
    """

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch_size: int, timeout_s: float):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.batch_sizes: Counter[int] = Counter()
        """Batches run, by size."""
        self._queue: asyncio.Queue = asyncio.Queue()  # binds to the loop that first uses it

    async def submit(self, item: Any) -> tuple[Any, int]:
        """Wait for `item`'s result; returns (result, size of the batch it was answered in)."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def run(self) -> None:
        """The batching loop (a task for the server's lifetime)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.timeout_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - loop.time()
                try:
                    batch.append(self._queue.get_nowait() if remaining <= 0
                                 else await asyncio.wait_for(self._queue.get(), remaining))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a client may have gone away
            if live:
                await self._answer(live)

    async def _answer(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 (handed to the waiting requests)
            if len(batch) > 1:  # answer each alone: one failing item must not fail the others
                for one in batch:
                    await self._answer([one])
            elif not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        self.batch_sizes[len(batch)] += 1
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result((result, len(batch)))


def decode_base64_image(text: Any) -> bytes:
    """Image bytes from a base64 string (a `data:image/...;base64,` prefix is allowed). Never a path or URL."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("no image: send 'image' as a base64 string in JSON, or as a multipart file")
    data = decode_base64(text)  # line breaks (`base64` wraps at 76 columns) and the URL-safe alphabet are fine
    if data is None:
        raise UserError("the image is not valid base64")
    return data


class _TooLarge(Exception):
    """Raised inside a request's body read once it passes the limit (never seen by the route)."""


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 without being parsed: as soon as its
    Content-Length says so, else once the bytes received pass the limit (a chunked body). The rest of the body is
    read and dropped first, so the client gets its answer rather than a connection reset mid-upload."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, scope, receive, send, message: dict) -> None:
        while message.get("more_body"):  # drain, keeping nothing
            message = await receive()
        detail = f"request body over the limit of {self.max_bytes / 2**20:g} MiB (serve --max-request-mb)"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, {"more_body": True})
        received, last = 0, {}

        async def limited():
            nonlocal received, last
            last = await receive()
            received += len(last.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge
            return last

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send, last)


def create_app(predictor, max_batch_size: int = 8, batch_timeout_ms: float = 0.0, max_request_mb: float = 4.0):
    """The FastAPI app serving `predictor` (a `student.predictor.Predictor`)."""
    task = predictor.task.name
    queue = BatchQueue(lambda rows: predictor.predict_rows(rows), max_batch_size, batch_timeout_ms / 1000.0)
    refused: Counter[int] = Counter()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker = asyncio.create_task(queue.run())
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    app = FastAPI(title="narvl-pipe", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=int(max_request_mb * 2**20))

    def refuse(status: int, reason: str):
        refused[status] += 1
        raise HTTPException(status_code=status, detail=reason)

    async def read_request(request: Request) -> tuple[bytes, dict[str, Any]]:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            fields = {k: v for k, v in form.items() if k != "image"}
            upload = form.get("image")
            data = await upload.read() if isinstance(upload, UploadFile) else decode_base64_image(upload)
            if not data:
                raise UserError("no image: the uploaded 'image' file is empty")
            return data, fields
        if ctype and not ctype.startswith("application/json"):
            refuse(415, f"unsupported content type {ctype.split(';')[0]!r}: send JSON or multipart/form-data")
        try:
            body = await request.json()
        except ValueError:
            raise UserError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise UserError("the request body must be a JSON object")
        return decode_base64_image(body.get("image")), {k: v for k, v in body.items() if k != "image"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "task": task, "backend": predictor.backend, "kind": predictor.model.kind}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        sizes = queue.batch_sizes
        return {"requests": sum(n * c for n, c in sizes.items()), "batches": sum(sizes.values()),
                "batch_sizes": {str(n): c for n, c in sorted(sizes.items())},
                "refused": {str(s): c for s, c in sorted(refused.items())},
                "max_batch_size": max_batch_size, "batch_timeout_ms": batch_timeout_ms}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        try:
            data, fields = await read_request(request)
            asked = fields.pop("task", None)
            if asked is not None and asked != task:
                raise UserError(f"this server serves task {task}, not {asked!r}")
            unknown = sorted(set(fields) - set(predictor.text_fields))
            if unknown:
                raise UserError(f"unknown field(s) {unknown}; this server ({task}) reads image"
                                + "".join(f", {f}" for f in predictor.text_fields))
            # Decoding a large image takes a while: off the event loop.
            row = await asyncio.to_thread(predictor.row, data, fields)
        except ImageLoadError as err:  # PIL's own text names an in-memory buffer, which means nothing to a client
            cause = err.__cause__
            refuse(400, "cannot decode the image: " + ("not an image format PIL reads"
                                                        if isinstance(cause, UnidentifiedImageError) or cause is None
                                                        else str(cause).splitlines()[0]))
        except UserError as err:
            refuse(400, str(err).splitlines()[0])
        try:
            prediction, batch_size = await queue.submit(row)
        except UserError as err:  # an input the model cannot take (e.g. a prompt longer than the export's limit)
            refuse(422, str(err).splitlines()[0])
        return {"task": task, "output": prediction.output, "prediction": prediction.prediction,
                "batch_size": batch_size}

    return app


@contextlib.contextmanager
def background_server(app, host: str = "127.0.0.1", tries: int = 400) -> Iterator[str]:
    """Run `app` with uvicorn in a thread of this process (tests, benchmarks); yield its base URL once /health answers.

    The socket is bound here on port 0, so the OS picks a free port and no other process can take it in between.
    """
    # proto IPPROTO_TCP, as uvicorn's own sockets have: asyncio then sets TCP_NODELAY on each connection (without
    # it, Nagle's algorithm and delayed ACKs add 40 ms to every response written in two parts).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((host, 0))
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(tries):  # bounded readiness poll
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            thread.join(0.05)
            if not thread.is_alive():
                raise RuntimeError("the server thread stopped before answering /health")
        else:
            raise RuntimeError(f"the server did not answer /health after {tries} tries")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def serve(cfg: ServeConfig) -> None:
    """Load the model and serve it until interrupted."""
    predictor = Predictor.from_pretrained(cfg.model, task=cfg.task, device=cfg.device, answers=cfg.answers)
    app = create_app(predictor, cfg.max_batch_size, cfg.batch_timeout_ms, cfg.max_request_mb)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
