"""The Starlette application: the provider-facing endpoint, health, and the admin API mount.

``create_app(settings)`` builds everything from explicit settings; the lifespan opens the
database, loads the plugins and starts the outbox worker inside this process.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from . import admin, dashboard
from .auth import AdminAuth, ensure_admin_token
from .config import Settings
from .ingress import Inbound, Ingress
from .metrics import Metrics
from .plugins import Registry, load_registry
from .store import Database
from .worker import Worker

log = logging.getLogger("ingress_box.app")

ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class Box:
    """Everything a request handler may need, built once per app."""

    settings: Settings
    db: Database
    registry: Registry
    ingress: Ingress
    auth: AdminAuth
    worker: Worker | None
    metrics: Metrics
    clock: Callable[[], float]
    generated_token: str | None = None


def _headers(request: Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _public_url(request: Request, headers: dict[str, str], settings: Settings) -> str:
    """The URL the provider called: the configured public base, else what the request says.

    Built from the raw path and query (as the provider signed them), not re-encoded.
    """
    scope = request.scope
    tail: str = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        tail += "?" + scope["query_string"].decode("latin-1")
    if settings.public_url:
        return settings.public_url.rstrip("/") + tail
    return f"{scope['scheme']}://{headers.get('host', 'localhost')}{tail}"


async def ingress_endpoint(request: Request) -> Response:
    box: Box = request.app.state.box
    params = request.path_params
    headers = _headers(request)
    length = headers.get("content-length", "")
    query = request.scope["query_string"].decode("latin-1")
    inbound = Inbound(
        method=request.method,
        plugin=params["plugin"],
        instance=params["instance"],
        route=params["route"],
        subpath=params.get("rest", "") + ("?" + query if query else ""),
        url=_public_url(request, headers, box.settings),
        query_string=query,
        headers=headers,
        body=request.stream(),
        content_length=int(length) if length.isdigit() else None,
    )
    answer = await box.ingress.handle(inbound)
    return Response(answer.body, status_code=answer.status, headers=answer.headers,
                    media_type=answer.content_type)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    box: Box = request.app.state.box
    problems = []
    try:
        await box.db.awrite(lambda conn: conn.execute(
            "INSERT INTO meta (key, value) VALUES ('ready_probe', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(box.clock()),)))
    except Exception as exc:  # noqa: BLE001 (any failure to commit means not ready)
        problems.append(f"database not writable: {exc}")
    if box.worker is not None and not box.worker.alive():
        problems.append("worker not running")
    if problems:
        return JSONResponse({"ready": False, "problems": problems}, status_code=503)
    return JSONResponse({"ready": True})


async def metrics_endpoint(request: Request) -> Response:
    box: Box = request.app.state.box
    if not box.settings.metrics_public and not box.auth.check(
            request.headers.get("authorization")):
        return JSONResponse({"error": {"code": "unauthorized",
                                       "message": "admin token required"}}, status_code=401)
    body = await run_in_threadpool(box.metrics.exposition)  # the collector reads the database
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time,
               run_worker: bool = True, transport: httpx.BaseTransport | None = None) -> Starlette:
    """The whole appliance as an ASGI app (the worker runs in its lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry = load_registry(settings.plugins_dir)
        db = Database(settings.db_path, synchronous=settings.synchronous,
                      busy_timeout=settings.busy_timeout_seconds).open()
        await db.aopen()
        auth, generated = ensure_admin_token(db, settings.admin_token)
        ingress = Ingress(settings, db, registry, clock=clock)
        metrics = Metrics(db)
        db.on_commit.append(metrics.on_commit)
        ingress.observers.append(metrics.on_request)
        worker = None
        if run_worker:
            worker = Worker(settings, db, registry, clock=clock, transport=transport)
            ingress.on_accepted.append(worker.wake)
            worker.observers.append(metrics.on_attempt)
            worker.start()
        app.state.box = Box(settings, db, registry, ingress, auth, worker, metrics, clock,
                            generated)
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            await db.aclose()
            db.close()

    routes = [
        Route("/ingress/{plugin}/{instance}/{route}", ingress_endpoint, methods=ANY_METHOD),
        Route("/ingress/{plugin}/{instance}/{route}/{rest:path}", ingress_endpoint,
              methods=ANY_METHOD),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        *dashboard.routes(),  # /admin/ui: before /admin, whose guard wants a bearer token
        Mount("/admin", routes=admin.routes()),
        *admin.top_level_routes(),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
