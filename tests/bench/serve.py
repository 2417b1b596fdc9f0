"""Tiny launcher for the benchmarks: one server per process, 127.0.0.1 only.

    python tests/bench/serve.py box    --port P --db PATH [--no-worker] [--logs]
    python tests/bench/serve.py bare   --port P --secret S
    python tests/bench/serve.py target --port P --log FILE [--delay SECONDS]
    python tests/bench/serve.py worker --port P --db PATH   (port unused: `ingress-box worker`)

``box`` is ``ingress_box.app.create_app(load_settings(...))`` (INGRESS_BOX_* variables apply, so
INGRESS_BOX_WORKERS sets the worker count). ``bare`` is the ceiling: a Starlette endpoint that reads
the body and checks ``X-Signature: sha256=hex(HMAC-SHA256(secret, body))``. Both run under uvicorn
with the same options (auto loop/http, i.e. uvloop + httptools when installed, one process,
log_level warning, no access log). ``--logs`` adds the box's own logging as ``ingress-box serve``
configures it (one INFO line per request and per delivery attempt, to stderr).

``target`` is a raw asyncio HTTP/1.1 server that answers 200 after ``--delay`` seconds and
appends ``<ingress-box-delivery-id>\\t<time.monotonic()>`` per request to ``--log``
(CLOCK_MONOTONIC is system-wide on Linux, so senders in other processes compare).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import importlib.util
import json
import os
import signal
import sys
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


def uvicorn_options() -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "log_level": "warning",
        "access_log": False,
        "loop": "auto",
        "http": "auto",
    }


def bare_app(secret: bytes) -> Starlette:
    async def ingress(request: Request) -> Response:
        body = await request.body()
        given = request.headers.get("x-signature", "")
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return Response(b'{"error":"bad signature"}', 401, media_type="application/json")
        return Response(b'{"status":"accepted"}', 202, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/ingress/{plugin}/{instance}/{route}", ingress, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )


def run_box(args: argparse.Namespace) -> None:
    from ingress_box.app import create_app
    from ingress_box.config import load_settings

    settings = load_settings(db_path=args.db, port=args.port)
    shown = {
        k: getattr(settings, k)
        for k in (
            "db_path",
            "synchronous",
            "workers",
            "busy_timeout_seconds",
            "rate_limit",
            "max_body_bytes",
            "delivery_timeout_seconds",
        )
    }
    if args.logs:
        from ingress_box import logs

        logs.configure(settings.log_format)
    shown.update(
        run_worker=not args.no_worker,
        box_logs=args.logs,
        **uvicorn_options(),
        uvloop=bool(importlib.util.find_spec("uvloop")),
        httptools=bool(importlib.util.find_spec("httptools")),
    )
    print("settings:", json.dumps(shown, default=str), flush=True)
    app = create_app(settings, run_worker=not args.no_worker)
    uvicorn.run(app, port=args.port, **uvicorn_options())


async def run_target(port: int, delay: float, log_path: str) -> None:
    log = open(log_path, "a", buffering=1)  # noqa: SIM115, ASYNC230 (closed at exit; once at start)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, delivery = 0, ""
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"ingress-box-delivery-id":
                        delivery = value.strip().decode()
                if length:
                    await reader.readexactly(length)
                log.write(f"{delivery}\t{time.monotonic():.6f}\n")
                if delay:
                    await asyncio.sleep(delay)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await stop.wait()
    log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["box", "bare", "target", "worker"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", help="box: the SQLite file")
    parser.add_argument("--no-worker", action="store_true", help="box: run_worker=False")
    parser.add_argument(
        "--logs",
        action="store_true",
        help="box: log one line per request/attempt, as `ingress-box serve` does",
    )
    parser.add_argument("--secret", default="", help="bare: the HMAC secret")
    parser.add_argument("--delay", type=float, default=0.0, help="target: seconds per request")
    parser.add_argument("--log", help="target: where to append receive times")
    args = parser.parse_args()
    if args.kind == "box":
        run_box(args)
    elif args.kind == "bare":
        print("settings:", json.dumps(uvicorn_options()), flush=True)
        uvicorn.run(bare_app(args.secret.encode()), port=args.port, **uvicorn_options())
    elif args.kind == "worker":  # exactly what a user runs
        os.execv(sys.executable, [sys.executable, "-m", "ingress_box", "worker", "--db", args.db])
    else:
        asyncio.run(run_target(args.port, args.delay, args.log))


if __name__ == "__main__":
    main()
