"""Real servers for tests: the box under uvicorn in a thread, and a recording forward target."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from ingress_box.app import App, create_app
from ingress_box.config import Settings
from ingress_box.signing import generate_outbound_secret
from ingress_box.store import instances
from ingress_box.store.instances import Instance
from ingress_box.web.box import Box


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveBox:
    url: str
    app: App

    @property
    def box(self) -> Box:
        box: Box = self.app.state.box
        return box


@contextlib.contextmanager
def running_box(settings: Settings, **app_options: Any) -> Iterator[LiveBox]:
    """The real app (lifespan, worker) under uvicorn on 127.0.0.1, stopped on exit."""
    port = free_port()
    app = create_app(settings, **app_options)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the box did not start")
        time.sleep(0.01)
    try:
        yield LiveBox(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def add_instance(
    box: Box,
    plugin: str = "generic",
    instance: str = "main",
    secret: str = "s3cret-value",
    **fields: Any,
) -> Instance:
    """Create an instance straight through the store (no admin API involved)."""
    now = time.time()
    fields.setdefault("outbound_secret", generate_outbound_secret())
    inst = Instance(
        plugin_id=plugin,
        instance_id=instance,
        secret=secret,
        created_at=now,
        updated_at=now,
        **fields,
    )
    result: Instance = box.db.write(instances.insert(inst))
    return result


def generic_headers(body: bytes, secret: str = "s3cret-value", **extra: str) -> dict[str, str]:
    """Headers of a request the `generic` plugin verifies."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"x-signature": f"sha256={digest}", "content-type": "application/json", **extra}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Target:
    """A local HTTP server that records every POST and answers what ``script`` says."""

    url: str
    received: list[Received] = field(default_factory=list)
    # Called with the request number (0-based) and the request; returns (status, headers, body).
    script: Callable[[int, Received], tuple[int, dict[str, str], bytes]] = lambda n, r: (
        200,
        {},
        b"ok",
    )
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.01)
        raise AssertionError(f"target got {len(self.received)} requests, wanted {count}")


@contextlib.contextmanager
def running_target(**options: Any) -> Iterator[Target]:
    port = free_port()
    target = Target(url=f"http://127.0.0.1:{port}/hook", **options)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            got = Received(
                self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
            )
            with target.lock:
                n = len(target.received)
                target.received.append(got)
            if target.delay:
                time.sleep(target.delay)
            status, headers, answer = target.script(n, got)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that vanishes (a killed box) is expected in these tests

    server = Server(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield target
    finally:
        server.shutdown()
        server.server_close()
