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
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from .config import Settings
from .ingress import Inbound, Ingress
from .metrics import Metrics
from .plugins import Registry, load_registry
from .store import Database
from .web import admin, dashboard
from .web.auth import AdminAuth, ensure_admin_token
from .worker import IDLE_SECONDS, Worker

log = logging.getLogger("ingress_box.app")

INGRESS = "/ingress/"


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


class _Disconnected(Exception):
    """The provider went away before its body arrived."""


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _public_url(scope: Scope, headers: dict[str, str], settings: Settings) -> str:
    """The URL the provider called: the configured public base, else what the request says.

    Built from the raw path and query (as the provider signed them), not re-encoded.
    """
    tail: str = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        tail += "?" + scope["query_string"].decode("latin-1")
    if settings.public_url:
        return settings.public_url.rstrip("/") + tail
    return f"{scope['scheme']}://{headers.get('host', 'localhost')}{tail}"


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def ingress_endpoint(box: Box, scope: Scope, receive: Receive, send: Send) -> None:
    """``ANY /ingress/{plugin}/{instance}/{route}[/{anything}]``, as plain ASGI."""
    plugin, instance, route, rest = (scope["path"][len(INGRESS) :].split("/", 3) + ["", ""])[:4]
    headers = _headers(scope)
    length = headers.get("content-length", "")
    query = scope["query_string"].decode("latin-1")
    inbound = Inbound(
        method=scope["method"],
        plugin=plugin,
        instance=instance,
        route=route,
        subpath=rest + ("?" + query if query else ""),
        url=_public_url(scope, headers, box.settings),
        query_string=query,
        headers=headers,
        body=_body(receive),
        content_length=int(length) if length.isdigit() else None,
    )
    try:
        answer = await box.ingress.handle(inbound)
    except _Disconnected:
        return
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (b"content-type", answer.content_type.encode("latin-1")),
                (b"content-length", str(len(answer.body)).encode()),
                *(
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in answer.headers.items()
                ),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})


class App:
    """The ASGI entry point. Provider requests go straight to the ingress: the hottest path
    skips Starlette's routing, request and response layers (one prefix test instead).
    Everything else, lifespan included, is the Starlette app."""

    def __init__(self, starlette: Starlette) -> None:
        self.starlette = starlette

    @property
    def state(self) -> State:
        return self.starlette.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(INGRESS):
            await ingress_endpoint(self.starlette.state.box, scope, receive, send)
        else:
            await self.starlette(scope, receive, send)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    box: Box = request.app.state.box
    problems = []
    try:
        await box.db.awrite(
            lambda conn: conn.execute(
                "INSERT INTO meta (key, value) VALUES ('ready_probe', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(box.clock()),),
            )
        )
    except Exception as exc:  # noqa: BLE001 (any failure to commit means not ready)
        problems.append(f"database not writable: {exc}")
    if box.worker is not None and not box.worker.alive():
        problems.append("worker not running")
    if problems:
        return JSONResponse({"ready": False, "problems": problems}, status_code=503)
    return JSONResponse({"ready": True})


async def metrics_endpoint(request: Request) -> Response:
    box: Box = request.app.state.box
    if not box.settings.metrics_public and not box.auth.check(request.headers.get("authorization")):
        return JSONResponse(
            {"error": {"code": "unauthorized", "message": "admin token required"}}, status_code=401
        )
    body = await run_in_threadpool(box.metrics.exposition)  # the collector reads the database
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    run_worker: bool | None = None,
    transport: httpx.BaseTransport | None = None,
) -> App:
    """The whole appliance as an ASGI app (the worker runs in its lifespan).

    ``run_worker=False`` leaves the worker out entirely (tests of the ingress alone); None
    follows ``settings.run_worker``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry = load_registry(settings.plugins_dir)
        db = Database(
            settings.db_path,
            synchronous=settings.synchronous,
            busy_timeout=settings.busy_timeout_seconds,
        ).open()
        await db.aopen()
        auth, generated = ensure_admin_token(db, settings.admin_token)
        ingress = Ingress(settings, db, registry, clock=clock)
        metrics = Metrics(db)
        db.on_commit.append(metrics.on_commit)
        ingress.observers.append(metrics.on_request)
        worker = None
        if run_worker is not False:
            worker = Worker(
                settings, db, registry, clock=clock, transport=transport, idle_seconds=IDLE_SECONDS
            )
            ingress.on_accepted.append(worker.wake)
            worker.observers.append(metrics.on_attempt)
            # settings.run_worker False: deliveries are made by `ingress-box worker` processes;
            # this one only wakes them when it accepts something.
            worker.start(consume=settings.run_worker)
        app.state.box = Box(
            settings, db, registry, ingress, auth, worker, metrics, clock, generated
        )
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            await db.aclose()
            db.close()

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        *dashboard.routes(),  # /admin/ui: before /admin, whose guard wants a bearer token
        Mount("/admin", routes=admin.routes()),
        *admin.top_level_routes(),
    ]
    return App(Starlette(routes=routes, lifespan=lifespan))
