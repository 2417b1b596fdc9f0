"""``/healthz`` (the process answers), ``/readyz`` (it can do its job) and ``/metrics``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ..store import meta
from .box import box_of
from .kit import refusal

# What /readyz commits each time: the size of a large webhook, so a file that can only take small
# writes any more is not ready either. Cheap: a few pages, once per probe.
PROBE_BYTES = 16 * 1024


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    box = box_of(request)
    problems = []
    try:
        await box.db.awrite(meta.probe(PROBE_BYTES))
    except Exception as exc:  # noqa: BLE001 (any failure to commit means not ready)
        problems.append(f"database not writable: {exc}")
    if box.db.damage is not None:  # a commit of a delivery touches pages this probe may not
        problems.append(f"database damaged: {box.db.damage}")
    if box.worker is not None and not box.worker.alive():
        problems.append("worker not running")
    if problems:
        return JSONResponse({"ready": False, "problems": problems}, status_code=503)
    return JSONResponse({"ready": True})


async def metrics_endpoint(request: Request) -> Response:
    box = box_of(request)
    if not box.settings.metrics_public:
        verdict = box.auth.attempt(
            request.headers.get("authorization"),
            request.client.host if request.client else None,
            box.clock(),
            "metrics",
        )
        if not verdict.ok:
            return refusal(verdict)
    body = await run_in_threadpool(box.metrics.exposition)  # the collector reads the database
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
    ]
