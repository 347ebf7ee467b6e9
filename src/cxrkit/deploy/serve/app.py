"""The ``cxrkit serve`` application: :func:`create_app` builds it, :func:`run_server` runs it.

Routes: ``GET /`` (the web page), ``GET /health``, ``GET /v1/model``, ``POST /v1/predict``,
OpenAPI docs at ``/docs`` (Swagger UI served from the installed package, no CDN). With a token
every ``/v1/*`` route wants ``Authorization: Bearer TOKEN``; the page and ``/health`` are open.

Status codes of ``/v1/predict``: 200; 400 malformed multipart; 401 missing or wrong token;
408 the body did not arrive within ``timeout``; 413 upload over the limit; 415 not
multipart, or content that does not decode as PNG/JPEG/DICOM (the reason is returned);
422 no ``file`` field or a bad ``cam`` value; 503 + ``Retry-After`` when every worker and
queue place is taken; 504 the prediction did not finish within ``timeout``.

A 200 answer says whether the image looks like the model's training data (``input_gate``,
see :mod:`cxrkit.deploy.serve.engine`); a flagged image is still predicted, the page shows the
warning above the findings.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxrkit import __version__
from cxrkit.deploy.serve.engine import DISCLAIMER, Engine
from cxrkit.deploy.serve.limits import Admission, ServeSettings, Stopwatch
from cxrkit.deploy.serve.monitor import Monitor, RequestMetrics
from cxrkit.deploy.serve.upload import UploadError, check_declared_size, read_upload
from cxrkit.errors import UserError
from cxrkit.files import strict_json
from cxrkit.io.xray import ImageReadError

log = logging.getLogger("cxrkit.serve")

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "one PNG, JPEG or DICOM file",
                        }
                    },
                }
            }
        },
    }
}
MONITORED = ("/v1/predict", "/v1/model", "/v1/model/card.md", "/v1/monitor", "/metrics", "/health")
_bearer = HTTPBearer(auto_error=False, description="needed when the server has a token")


class SecurityHeaders:
    """ASGI middleware: ``nosniff`` and ``no-referrer`` on every response, ``no-store`` on
    ``/v1/*`` (predictions are patient data: no cache may keep them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if scope["path"].startswith("/v1/"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _static(name: str) -> bytes:
    return (resources.files("cxrkit.deploy.serve") / name).read_bytes()


def _fail(status: int, reason: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=reason, headers=headers)


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving ``engine`` within ``settings``' limits."""
    admission = Admission(settings.workers, settings.max_queue)
    pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="cxrkit-serve")
    page = {n: _static(n) for n in ("page.html", "page.js", "page.css")}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPIOffline(
        title="cxrkit serve",
        version=__version__,
        description=f"Chest X-ray findings from one image. **{DISCLAIMER}**",
        lifespan=lifespan,
    )
    app.state.admission = admission
    app.state.engine = engine
    monitor = app.state.monitor = Monitor(
        engine.findings,
        engine.predictor.card.get("reference"),
        gate=engine.predictor.gate is not None,
        window=settings.monitor_window,
        queue_depth=lambda: admission.in_use,
    )

    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, monitor=monitor, endpoints=MONITORED)

    def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> None:
        if settings.token is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            reason = "wrong bearer token" if credentials else "missing bearer token"
            raise _fail(401, reason, {"WWW-Authenticate": "Bearer"})

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page["page.html"], headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/page.js", include_in_schema=False)
    async def script() -> Response:
        return Response(page["page.js"], media_type="text/javascript")

    @app.get("/page.css", include_in_schema=False)
    async def style() -> Response:
        return Response(page["page.css"], media_type="text/css")

    @app.get("/health", summary="liveness and load")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "in_flight": admission.in_use,
            "capacity": admission.capacity,
            "max_upload_mb": settings.max_upload_mb,
            "auth": settings.token is not None,
        }

    @app.get("/v1/model", summary="the model card", dependencies=[Depends(require_token)])
    async def model() -> dict[str, Any]:
        return engine.model_card()

    @app.get(
        "/v1/model/card.md",
        summary="MODEL_CARD.md: the card a reviewer reads (a bundle's own file, with its test "
        "figures; for a checkpoint, written from its card)",
        dependencies=[Depends(require_token)],
        response_class=PlainTextResponse,
    )
    async def model_card_md() -> PlainTextResponse:
        return PlainTextResponse(engine.model_card_markdown(), media_type="text/markdown")

    @app.get(
        "/v1/monitor",
        summary="recent positive-call and OOD rates, and each finding's score drift (PSI) "
        "against the card's validation reference",
        dependencies=[Depends(require_token)],
    )
    async def monitor_summary() -> dict[str, Any]:
        return strict_json(monitor.summary())

    @app.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format); the token applies when set",
        dependencies=[Depends(require_token)],
        response_class=PlainTextResponse,
    )
    async def metrics() -> Response:
        return Response(monitor.prometheus(), media_type=CONTENT_TYPE_LATEST)

    async def _read(request: Request, clock: Stopwatch) -> bytes:
        """The upload's bytes, in memory, within the size limit and the time left."""
        limit = settings.max_upload_bytes
        try:
            check_declared_size(request.headers.get("content-length"), limit)
            return await asyncio.wait_for(
                read_upload(
                    request.stream(), request.headers.get("content-type"), field="file", limit=limit
                ),
                timeout=clock.left(),
            )
        except UploadError as err:
            log.info("predict %d: %s", err.status, err.reason)
            raise _fail(err.status, err.reason) from None
        except (asyncio.TimeoutError, TimeoutError):
            raise _fail(408, f"the upload did not arrive within {settings.timeout:g} s") from None
        except ClientDisconnect:
            raise _fail(400, "client disconnected during the upload") from None

    def _job(data: bytes, targets: Any, image: bool) -> dict[str, Any]:
        """Runs in a worker thread; its duration feeds the Retry-After estimate."""
        started = Stopwatch(0)
        try:
            return engine.predict(data, cam=targets, image=image)
        finally:
            admission.record(started.elapsed())

    @app.post(
        "/v1/predict",
        summary="findings for one PNG, JPEG or DICOM upload (multipart field `file`)",
        dependencies=[Depends(require_token)],
        openapi_extra=UPLOAD_SCHEMA,
    )
    async def predict(
        request: Request,
        cam: str | None = Query(  # noqa: B008
            None,
            description="true: heatmaps of the positive findings (the most probable one when "
            "none is positive); all; or finding names, comma-separated",
        ),
        image: bool = Query(False, description="also return the decoded image as a PNG"),  # noqa: B008
    ) -> JSONResponse:
        clock = Stopwatch(settings.timeout)
        try:
            targets = engine.cam_targets(cam)
        except UserError as err:
            raise _fail(422, str(err)) from None
        slot = admission.try_enter()
        if slot is None:
            log.warning("predict 503: all %d places taken", admission.capacity)
            retry = str(admission.retry_after())
            raise _fail(503, "server busy: the queue is full, retry later", {"Retry-After": retry})
        try:
            data = await _read(request, clock)
            future = pool.submit(_job, data, targets, image)
        except BaseException:
            slot.release()
            raise
        # From here the slot is the job's: released when the thread is done, not before.
        future.add_done_callback(slot.release)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout=clock.left())
        except (asyncio.TimeoutError, TimeoutError):
            log.warning("predict 504 after %.1f s", clock.elapsed())
            raise _fail(504, f"no result within {settings.timeout:g} s (--timeout)") from None
        except ImageReadError as err:
            log.info("predict 415: unreadable upload (%d bytes)", len(data))
            raise _fail(415, f"not a readable image: {err.reason}") from None
        info, gate = result["image_info"], result["input_gate"]
        monitor.record_prediction(
            np.array([f["probability"] for f in result["findings"]]),
            np.array([f["call"] for f in result["findings"]]),
            None if gate is None else bool(gate["in_distribution"]),
        )
        log.info(
            "predict 200: %s %dx%d, %d bytes, %d positive, %s, %.0f ms",
            info["format"],
            info["width"],
            info["height"],
            len(data),
            len(result["positive"]),
            "no input gate"
            if gate is None
            else ("in distribution" if gate["in_distribution"] else "flagged out of distribution"),
            1000 * clock.elapsed(),
        )
        return JSONResponse(result)

    return app


def check_port(host: str, port: int) -> None:
    """UserError when ``host:port`` cannot be bound (in use, or not an address here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def run_server(engine: Engine, settings: ServeSettings) -> None:
    """Serve on ``settings.host:port`` with uvicorn until interrupted; request lines and the
    ``cxrkit.serve`` log (status, format, size, time: never a file name) go to stderr."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    check_port(settings.host, settings.port)
    logging_config = copy.deepcopy(LOGGING_CONFIG)
    logging_config["loggers"]["cxrkit.serve"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    app = create_app(engine, settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=logging_config,
        timeout_keep_alive=5,
        # connections beyond this get uvicorn's own 503: a second bound, beside the queue
        limit_concurrency=app.state.admission.capacity + 64,
    )
