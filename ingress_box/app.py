"""The wiring: ``create_app(settings)`` builds the whole appliance as one ASGI app.

The lifespan opens the database, loads the plugins, and starts the outbox worker inside this
process; requests find everything through the :class:`~ingress_box.web.box.Box` it builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from .config import DatabaseUrl, Settings
from .indexer import Indexer
from .ingress import Ingress
from .metrics import Metrics
from .plugins import load_registry
from .quarantine import Quarantine
from .store import open_database
from .web import admin, dashboard, health, provider
from .web.auth import ensure_admin_token
from .web.box import Box
from .worker import IDLE_SECONDS, Worker


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
        if scope["type"] == "http" and scope["path"].startswith(provider.PREFIX):
            await provider.endpoint(self.starlette.state.box, scope, receive, send)
        else:
            await self.starlette(scope, receive, send)


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
        db = open_database(
            settings.db_path,
            synchronous=settings.synchronous,
            busy_timeout=settings.busy_timeout_seconds,
        ).open()
        await db.aopen()
        auth, generated = ensure_admin_token(db, settings.admin_token)
        ingress = Ingress(settings, db, registry, clock=clock)
        ingress.on_refused.append(Quarantine(settings, db, clock=clock).keep)
        metrics = Metrics(db)
        db.on_commit.append(metrics.on_commit)
        ingress.observers.append(metrics.on_request)
        worker = None
        if run_worker is not False:
            worker = Worker(
                settings, db, clock=clock, transport=transport, idle_seconds=IDLE_SECONDS
            )
            if settings.run_worker:  # the accept transaction hands new rows to this worker
                ingress.acceptor.handoff = worker
                worker.attach_loop(asyncio.get_running_loop())  # which forwards them here
            elif isinstance(settings.db_path, DatabaseUrl):
                # `ingress-box worker` processes deliver: huey's NOTIFY wakes them.
                ingress.on_accepted.append(worker.wake)
            # On SQLite they watch the file's outbox themselves: no drain enqueued per webhook.
            worker.observers.append(metrics.on_attempt)
            worker.start(consume=settings.run_worker)
        app.state.box = Box(
            settings, db, registry, ingress, auth, worker, metrics, clock, generated
        )
        indexer = Indexer(db)
        ingress.on_accepted.append(indexer.accepted)
        indexing = asyncio.create_task(indexer.run())
        try:
            yield
        finally:
            indexing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await indexing
            if worker is not None:
                await worker.stop_on_loop()
                worker.stop()
            await db.aclose()
            db.close()

    routes = [
        *health.routes(),
        *dashboard.routes(),  # /admin/ui: before /admin, whose guard wants a bearer token
        Mount("/admin", routes=admin.routes()),
    ]
    return App(Starlette(routes=routes, lifespan=lifespan))
