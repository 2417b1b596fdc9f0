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


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    box = box_of(request)
    problems = []
    try:
        await box.db.awrite(meta.put("ready_probe", str(box.clock())))
    except Exception as exc:  # noqa: BLE001 (any failure to commit means not ready)
        problems.append(f"database not writable: {exc}")
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
