"""The real box for tests: the app under uvicorn in a thread, and instances made through the store.

The forward target is :mod:`fake_target`; request signers are :mod:`signers`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from waiting import eventually

from ingress_box.app import App, create_app
from ingress_box.config import Settings
from ingress_box.signing import generate_outbound_secret
from ingress_box.store import Database, instances
from ingress_box.store.instances import Instance
from ingress_box.web.box import Box

SECRET = "s3cret-value"  # the secret add_instance gives an instance unless told


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
    # A server thread that died (a port taken, a failing lifespan) ends the wait at once.
    eventually(lambda: server.started or not thread.is_alive(), 10, "the box to start")
    if not server.started:
        raise RuntimeError("the box did not start")
    try:
        yield LiveBox(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def add_instance(
    box: Box,
    plugin: str = "generic",
    instance: str = "main",
    secret: str = SECRET,
    **fields: Any,
) -> Instance:
    """Create an instance straight through the store (no admin API involved)."""
    return insert_instance(box.db, plugin, instance, secret, **fields)


def insert_instance(
    db: Database,
    plugin: str = "generic",
    instance: str = "main",
    secret: str = SECRET,
    **fields: Any,
) -> Instance:
    """Write an instance into an open database file (no app needed)."""
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
    result: Instance = db.write(instances.insert(inst))
    return result
