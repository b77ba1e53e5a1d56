"""The HTTP service over the pipeline's steps: ``cl_ml_tools.master:app`` (FastAPI, ASGI).

Run it with ``cl-ml-tools serve``, ``uvicorn cl_ml_tools.master:app`` or gunicorn with uvicorn workers
(``gunicorn -k uvicorn_worker.UvicornWorker cl_ml_tools.master:app``); the config comes from
``$CL_ML_TOOLS_CONFIG``, else ``config.yaml`` in the working directory (docs/service.md).

| endpoint | does |
|---|---|
| ``GET /health`` | liveness, queue counts, MQTT state, models; never needs the API key |
| ``GET /metrics`` | Prometheus text format |
| ``POST /jobs/{plugin}`` | multipart ``file`` plus option fields → 202 and the job's status |
| ``POST /jobs/archive`` | the pipeline over the configured inputs → 202 (the pending one if there is one) |
| ``GET /jobs/{id}/status`` | the job's state and progress (``?wait=S``: until it finishes, at most S s) |
| ``GET /jobs/{id}/results`` | the rows of the step's table for the file, once finished (409 before) |
| ``GET /jobs/{id}/files/{name}`` | a file the job made (thumbnail, face crop, HLS playlist or segment) |
| ``GET /openapi.json`` | the API's description (:mod:`cl_ml_tools.service.openapi`); no /docs or /redoc pages |
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import math
import mimetypes
import os
import re
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__, models
from ..data import inventory
from ..media import sniff
from . import documents, mqtt, openapi, plugins, service_config
from .documents import STATES
from .jobs import ERROR, RUNNING, Job, JobStore
from .metrics import CONTENT_TYPE, Metrics
from .owner import Owner
from .plugins import ARCHIVE, INPUT, PLUGINS, OptionsError, Plugin
from .server_process import ServerProcess
from .storage import JOB_ID, RESULT_FILE, Layout
from .uploads import RequestError, Unavailable, arriving, receive
from .waiting import MAX_WAIT_S, RETRY_AFTER_S, Waiting

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 300
ERROR_CAUSE = "cl_ml_tools.error"  # the scope key where a refusal's code waits for the request counter
FILE_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}


class Service:
    """Everything one server process holds: the queue, what runs its jobs, the MQTT publisher, the metrics."""

    def __init__(self, config: service_config.ServiceConfig):
        self.config = config
        self.layout = Layout(config.storage_dir)
        self.layout.prepare()
        self.store = JobStore(self.layout, Owner.this_process())
        self.events = mqtt.events(config.mqtt)
        self.waiting = Waiting(self.store)
        self.jobs = ServerProcess(config, self.layout, self.store, self.events, finished=self.waiting.finished)
        self.disk = self.jobs.disk
        self.metrics = Metrics(self.store, self.events, self.disk)
        self.overrides = models.overrides_from_config(config.raw)
        self.uploads = 0
        """Uploads this process is receiving now (``server.max_uploads``)."""

    def start(self) -> None:
        self.jobs.start()

    def stop(self) -> None:
        self.jobs.stop()
        self.events.close()
        self.store.close()

    def plugin(self, name: str) -> Plugin | None:
        """The plugin named in a URL, if it exists and is enabled (the name is only ever a dict key)."""
        if name not in self.config.enabled_plugins:
            known = ", ".join(self.config.enabled_plugins)
            raise RequestError(404, "unknown_plugin", f"no plugin {name!r} on this server; it has: {known}")
        return PLUGINS.get(name)

    def retry_after(self, queued: int) -> int:
        """Seconds until a queue of ``queued`` jobs has likely moved on: their mean run time so far, spread
        over the job slots."""
        counts = [(n, seconds) for (plugin, _), (n, seconds) in self.store.totals().items() if plugin != ARCHIVE]
        runs = sum(n for n, _ in counts)
        mean = sum(seconds for _, seconds in counts) / runs if runs else RETRY_AFTER_S
        estimate = math.ceil(mean * queued / self.config.max_concurrent_jobs)
        return max(1, min(MAX_RETRY_AFTER_S, estimate))

    def model_states(self) -> dict[str, str]:
        """The state of every model an enabled plugin uses by default (``models list``'s states)."""
        ids = {
            m for p in self.config.enabled_plugins if p in PLUGINS for m in plugins.model_ids(p, self.config.raw, {})
        }
        return {m: models.cache_state(m, self.overrides)[0] for m in sorted(ids)}


def _configure_logging(level: str) -> None:
    """The package's records to stderr (the journal, under systemd) at ``server.log_level``; this handler
    replaces the command line's own, which shows warnings only."""
    logger = logging.getLogger("cl_ml_tools")
    logger.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s cl_ml_tools[{os.getpid()}] %(levelname)s %(name)s: %(message)s")
    )
    logger.handlers = [handler]
    logger.propagate = False


def _on_stop_signals(act: Callable[[], None]) -> None:
    """Run ``act`` first when SIGTERM or SIGINT arrives, then the ASGI server's own handler (uvicorn's, also
    under gunicorn's uvicorn worker and ``cl-ml-tools serve``), which begins the graceful stop. Only where the
    server installed a handler of its own, in the main thread, as uvicorn does before the app starts."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(number: int, frame: Any, previous: Callable[..., Any] = previous) -> None:
            act()
            previous(number, frame)

        signal.signal(signum, handler)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    config = service_config.load()
    _configure_logging(config.server["log_level"])
    service = Service(config)
    service.start()
    app.state.service = service
    _on_stop_signals(service.waiting.stop)
    log.info("serving plugins %s from %s", ", ".join(config.enabled_plugins), config.path)
    try:
        yield
    finally:
        await run_in_threadpool(service.stop)


# FastAPI's OpenTelemetry hooks are off: no provider is configured here, so they would only cost time on
# every request (``/metrics`` is the service's own).
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
# No /docs or /redoc (their pages load Swagger UI and ReDoc from a CDN) and FastAPI's own /openapi.json is
# replaced by one that needs the API key and describes the real requests and answers (see ``openapi``).
app = FastAPI(
    title="cl_ml_tools",
    version=__version__,
    lifespan=lifespan,
    telemetry=NO_TELEMETRY,
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


def _service(request: Request) -> Service:
    return request.app.state.service


def authorised(request: Request) -> None:
    key = _service(request).config.server["api_key"]
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise RequestError(401, "unauthorized", "this server needs the header 'Authorization: Bearer <api key>'")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(documents.refusal(code, message), status_code=status, headers=headers)


@app.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    request.scope[ERROR_CAUSE] = exc.code
    return _error(exc.status, exc.code, exc.message, exc.headers)


CLIENT_CLOSED = 499
"""What ``/metrics`` counts for a request whose client hung up (nginx's code): the client's doing, no 5xx."""


@app.exception_handler(ClientDisconnect)
async def _hung_up(request: Request, exc: ClientDisconnect) -> Response:
    log.info("%s %s: the client hung up before its request ended", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED)  # nobody reads it: uvicorn drops answers to closed connections


@app.exception_handler(HTTPException)
async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    message = "no such endpoint; see GET /openapi.json" if exc.status_code == 404 else str(exc.detail)
    return _error(exc.status_code, code, message)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error(400, "bad_request", f"{where}: {first.get('msg', 'invalid request')}")


@app.exception_handler(Exception)
async def _failed(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal", "the server failed to answer this request; its log says why")


class _CountRequests:
    """Counts answers by route and status for ``/metrics``. A plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` would pass every chunk of an upload through an extra stream."""

    def __init__(self, inner: Callable[..., Awaitable[None]]):
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        status, cause = 500, None

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.inner(scope, receive, sending)
        except Exception as exc:
            cause = type(exc).__name__
            raise
        finally:
            service = getattr(scope["app"].state, "service", None)
            if service is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                service.metrics.count_request(scope["method"], route, status, scope.get(ERROR_CAUSE) or cause)


app.add_middleware(_CountRequests)


# --------------------------------------------------------------------------------------------------- endpoints


@app.get("/health")
async def health(request: Request) -> dict[str, Any]:
    service = _service(request)
    return documents.health(
        await run_in_threadpool(service.store.counts),
        service.config.enabled_plugins,
        service.events.state,
        await run_in_threadpool(service.model_states),
        await run_in_threadpool(service.disk.describe),
    )


@app.get("/openapi.json", dependencies=[Depends(authorised)], include_in_schema=False)
async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(openapi.document(app, _service(request).config, authorised))


@app.get("/metrics", dependencies=[Depends(authorised)])
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(_service(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


def _accepted(job: Job, status: int = 202) -> JSONResponse:
    return JSONResponse(documents.status(job), status_code=status, headers={"Location": f"/jobs/{job.id}/status"})


@app.post("/jobs/archive", dependencies=[Depends(authorised)])
async def submit_archive(request: Request) -> JSONResponse:
    service = _service(request)
    service.plugin(ARCHIVE)
    pending = await run_in_threadpool(service.store.pending, ARCHIVE)
    if pending is not None:
        return _accepted(pending, 200)
    job = await run_in_threadpool(service.store.submit, uuid.uuid4().hex, ARCHIVE, {}, None)
    service.events.publish(job.id, "status", documents.status(job))
    service.jobs.dispatcher.wake()
    return _accepted(job)


async def admitted(request: Request) -> None:
    """Refuse an upload before reading it when the queue is at ``worker.max_queued_jobs`` (429) or the
    storage folder is low on space (507), both with ``Retry-After``; a plugin this server lacks is a 404 first."""
    service = _service(request)
    service.plugin(request.path_params["plugin"])
    queued, _ = await run_in_threadpool(service.store.queued)
    cap = service.config.worker["max_queued_jobs"]
    if queued >= cap:
        wait = await run_in_threadpool(service.retry_after, queued)
        raise Unavailable(429, "queue_full", f"{queued} jobs are queued (worker.max_queued_jobs {cap})", wait)
    if await run_in_threadpool(service.disk.low):
        message = "the server's storage folder is low on space (storage.min_free_bytes); try again later"
        raise Unavailable(507, "storage_full", message, MAX_RETRY_AFTER_S)


def _sniffed(kind: str, fmt: str) -> str:
    return f"{kind} ({fmt})" if kind in ("image", "video", "audio") else f"{fmt} data"


@app.post("/jobs/{plugin}", dependencies=[Depends(authorised), Depends(admitted)])
async def submit(plugin: str, request: Request) -> JSONResponse:
    service = _service(request)
    chosen = service.plugin(plugin)
    assert chosen is not None
    server = service.config.server
    if service.uploads >= server["max_uploads"]:
        raise Unavailable(
            503,
            "busy",
            f"this server is receiving {server['max_uploads']} uploads already (server.max_uploads); retry shortly",
            RETRY_AFTER_S,
        )
    service.uploads += 1
    job_id = uuid.uuid4().hex
    folder = service.layout.job_dir(job_id)
    try:
        folder.mkdir()
        part = folder / ".upload.part"
        headers = request.headers
        body = arriving(request.stream(), server["upload_idle_seconds"])
        upload = await receive(
            headers.get("content-type", ""), headers.get("content-length"), body, part, server["max_upload_bytes"]
        )
        if upload.size == 0:
            raise RequestError(400, "empty_file", "the uploaded file is empty")
        kind, fmt = sniff.sniff_bytes(upload.head, upload.extension)
        if not chosen.accepts(kind):
            raise RequestError(
                415,
                "unsupported_type",
                f"plugin {plugin} takes {chosen.describe_kinds()}; the uploaded bytes are {_sniffed(kind, fmt)}",
            )
        try:
            options = plugins.parse_options(chosen, upload.fields, service.config.raw)
        except OptionsError as exc:
            raise RequestError(400, "bad_options", str(exc)) from None
        stored = f"upload{upload.extension}"
        os.replace(part, folder / stored)
        file = {
            "name": upload.name,
            "size": upload.size,
            "kind": kind,
            "format": fmt,
            "mime": plugins.mime_type(fmt),
            "media_id": inventory.media_id(INPUT, job_id),
            "upload": stored,
        }
        job = await run_in_threadpool(service.store.submit, job_id, plugin, options, file)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            # Out of file descriptors (LimitNOFILE): too many connections at once, not a fault of this request.
            raise Unavailable(
                503, "busy", "this server has too many open files right now; retry shortly", RETRY_AFTER_S
            ) from None
        if exc.errno != errno.ENOSPC:
            raise
        raise Unavailable(
            507, "storage_full", "the server's storage folder is full; try again later", MAX_RETRY_AFTER_S
        ) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        service.uploads -= 1
    service.metrics.upload_bytes.inc(upload.size)
    service.events.publish(job.id, "status", documents.status(job))
    service.jobs.dispatcher.wake()
    return _accepted(job)


Wait = Query(0.0, ge=0.0, le=MAX_WAIT_S, description="seconds to wait for the job to finish")


@app.get("/jobs/{job_id}/status", dependencies=[Depends(authorised)])
async def status(job_id: str, request: Request, wait: float = Wait) -> dict[str, Any]:
    job = await _service(request).waiting.job(job_id, wait)
    return documents.status(job)


async def _finished_result(request: Request, job_id: str, wait: float) -> tuple[Service, bytes]:
    service = _service(request)
    job = await service.waiting.job(job_id, wait)
    if not job.finished:
        raise RequestError(409, "not_finished", f"job {job.id} is {job.state}; ask again later, or add ?wait=SECONDS")
    path = service.layout.job_dir(job.id) / RESULT_FILE
    try:
        return service, await run_in_threadpool(path.read_bytes)
    except FileNotFoundError:
        if job.state == ERROR and job.error:  # the server could not store the result (a full disk)
            return service, json.dumps(documents.error_result(service.layout, job, job.error)).encode()
        raise RequestError(404, "unknown_job", f"job {job.id}'s result was deleted (storage.retention_hours)") from None


@app.get("/jobs/{job_id}/results", dependencies=[Depends(authorised)])
async def results(job_id: str, request: Request, wait: float = Wait) -> Response:
    _, body = await _finished_result(request, job_id, wait)
    return Response(body, media_type="application/json")


@app.get("/jobs/{job_id}/files/{name:path}", dependencies=[Depends(authorised)])
async def job_file(job_id: str, name: str, request: Request) -> FileResponse:
    service, body = await _finished_result(request, job_id, 0.0)
    made = json.loads(body).get("files") or {}
    # The name is only looked up among the files the job made; the path comes from that list.
    if name not in made:
        raise RequestError(
            404, "unknown_file", f"job {job_id} made no file {name[:200]!r}; its files are listed in its results"
        )
    path = service.layout.out_dir(job_id).joinpath(*next(n for n in made if n == name).split("/"))
    media_type = FILE_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type)


# --------------------------------------------------------------------------------------------------- operator


@app.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness, apart from the liveness of ``/health``: 200 when the queue can be read, the storage
    folder has space, every model the enabled plugins use is in place and MQTT (when on) is connected;
    else 503, with each check's state."""
    service = _service(request)
    try:
        await run_in_threadpool(service.store.queued)
        queue = "ok"
    except Exception as exc:  # any failure to read the queue means not ready, whatever its kind
        queue = f"error: {exc}"
    disk = await run_in_threadpool(service.disk.describe)
    model_states = await run_in_threadpool(service.model_states)
    usable, body = documents.ready(queue, disk, model_states, service.events.state, service.waiting.stopping)
    return JSONResponse(body, status_code=200 if usable else 503)


@app.get("/jobs", dependencies=[Depends(authorised)])
async def list_jobs(
    request: Request,
    status: str | None = Query(None, description=f"one of {', '.join(STATES)}"),
    plugin: str | None = Query(None, max_length=64),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=20, description="next_cursor of the previous page"),
) -> dict[str, Any]:
    """Jobs newest first (their status documents), by status and plugin, a page at a time."""
    if status is not None and status not in STATES:
        raise RequestError(400, "bad_request", f"status must be one of {', '.join(STATES)}, not {status[:32]!r}")
    # ASCII digits only (str.isdigit also takes '²', which int() refuses), at most 18 of them (SQLite's integers).
    if cursor is not None and not re.fullmatch(r"[0-9]{1,18}", cursor):
        raise RequestError(400, "bad_request", "cursor must be the next_cursor of a previous page")
    service = _service(request)
    found, after = await run_in_threadpool(service.store.page, status, plugin, int(cursor) if cursor else None, limit)
    return documents.page(found, after)


@app.delete("/jobs/{job_id}", dependencies=[Depends(authorised)])
async def delete_job(job_id: str, request: Request) -> dict[str, Any]:
    """Cancel a queued or running job (its runner is killed, with what it started) or forget a finished
    one; its files are deleted."""
    service = _service(request)
    if not JOB_ID.match(job_id):
        raise RequestError(404, "unknown_job", f"no job {job_id[:64]!r}: job ids are 32 hexadecimal digits")
    job = await run_in_threadpool(service.store.remove, job_id)
    if job is None:
        raise RequestError(404, "unknown_job", f"no job {job_id}")
    if job.state == RUNNING:
        # Run by this process: stopped now; by another: at its next heartbeat.
        await run_in_threadpool(service.jobs.running.cancel, job_id)
    await run_in_threadpool(service.layout.remove_job, job_id)
    service.events.forget(job_id)
    service.waiting.finished(job_id)
    return documents.deleted(job_id, job.state)
