"""What runs a delivery, against a hostile operator or target: only known handlers, and an
attempt that never outlives its deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_TOKEN
from fake_target import FakeTarget, Reply
from live import SECRET, add_instance, free_port, insert_instance, running_box
from signers import sign_generic
from starlette.testclient import TestClient
from waiting import eventually

from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, load_settings
from ingress_box.store import open_database

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}

pytestmark = pytest.mark.both_stores

# A plugin that declares a handler of its own by module:function (any importable one will do).
DECLARING_MANIFEST = """
id = "acme"
name = "Acme"
handler = "json:dumps"

[routes.events.verify]
scheme = "none"
allow_unsigned = true
"""


@pytest.fixture
def client(tmp_path: Path, store: Path | DatabaseUrl) -> Any:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "acme.toml").write_text(DECLARING_MANIFEST)
    settings = load_settings({}, db_path=store, admin_token=ADMIN_TOKEN, plugins_dir=plugins)
    with TestClient(create_app(settings, run_worker=False)) as c:
        yield c


@pytest.mark.parametrize("handler", ["builtins:print", "os:system", "no-such-handler"])
def test_creating_an_instance_with_an_undeclared_handler_is_400(
    client: TestClient, handler: str
) -> None:
    """A handler that is neither registered nor declared by a plugin is refused, nothing made."""
    body = {"plugin": "generic", "instance": "shop", "handler": handler}
    answer = client.post("/admin/instances", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_input"
    assert client.get("/admin/instances/generic/shop", headers=AUTH).status_code == 404


def test_patching_an_instance_to_an_undeclared_handler_is_400(client: TestClient) -> None:
    """PATCH applies the same rule, and the handler stays what it was."""
    body = {"plugin": "generic", "instance": "shop"}
    assert client.post("/admin/instances", json=body, headers=AUTH).status_code == 201
    answer = client.patch(
        "/admin/instances/generic/shop", json={"handler": "builtins:print"}, headers=AUTH
    )
    assert answer.status_code == 400
    shown = client.get("/admin/instances/generic/shop", headers=AUTH).json()
    assert shown["handler"] == "forward"


def test_a_handler_a_plugin_declares_is_accepted_for_any_instance(client: TestClient) -> None:
    """The handlers plugins declare and the registered names are the allowed ones."""
    body = {"plugin": "generic", "instance": "shop", "handler": "json:dumps"}
    assert client.post("/admin/instances", json=body, headers=AUTH).status_code == 201
    answer = client.patch(
        "/admin/instances/generic/shop", json={"handler": "forward"}, headers=AUTH
    )
    assert answer.status_code == 200 and answer.json()["handler"] == "forward"


# -- the delivery deadline ------------------------------------------------------------------------

TIMEOUT = 2.0  # INGRESS_BOX_DELIVERY_TIMEOUT_SECONDS of these tests
# Status line, headers and body at 0.2 s a byte: about 15 s for the whole answer.
TRICKLE = Reply(200, body=b"fine, eventually", trickle=0.2)


def _post_generic(url: str, msg_id: str) -> httpx.Response:
    body = json.dumps({"n": msg_id}).encode()
    headers = {"content-type": "application/json", **sign_generic(SECRET, body, msg_id=msg_id)}
    return httpx.post(f"{url}/ingress/generic/main/events", content=body, headers=headers)


def test_an_attempt_at_a_trickling_target_ends_at_the_delivery_timeout(
    store: Path | DatabaseUrl, target: FakeTarget
) -> None:
    """A target answering one byte at a time cannot stretch an attempt past its deadline: it is
    recorded as a timeout after DELIVERY_TIMEOUT_SECONDS, well inside its lease."""
    target.reply(TRICKLE)
    settings = load_settings(
        {},
        db_path=store,
        admin_token=ADMIN_TOKEN,
        delivery_timeout_seconds=TIMEOUT,
        lease_seconds=3 * TIMEOUT,
        retry_base_seconds=60,
    )
    with running_box(settings) as live:
        add_instance(live.box, target_url=target.url)
        assert _post_generic(live.url, "slow-1").status_code == 202
        target.wait_for(1)

        def first_attempt() -> Any:
            return live.box.db.read_one("SELECT duration_ms, outcome, error FROM attempts")

        attempt = eventually(first_attempt, 4 * TIMEOUT, "the first attempt to be recorded")
    assert (attempt["outcome"], attempt["error"]) == ("retry", "timeout")
    assert attempt["duration_ms"] <= (TIMEOUT + 0.5) * 1000
    assert len(target.received) == 1  # the lease never ran out: nobody delivered it again


def test_serve_stops_within_its_bound_on_sigterm_during_a_trickling_attempt(
    store: Path | DatabaseUrl, target: FakeTarget
) -> None:
    """SIGTERM while an attempt trickles: serve exits 0 soon after the attempt's deadline (and
    so within the README's 10 s), not when the target is done."""
    target.reply(TRICKLE)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
    env |= {
        "INGRESS_BOX_DB": str(store),
        "INGRESS_BOX_ADMIN_TOKEN": ADMIN_TOKEN,
        "INGRESS_BOX_HOST": "127.0.0.1",
        "INGRESS_BOX_PORT": str(port),
        "INGRESS_BOX_DELIVERY_TIMEOUT_SECONDS": "4",
    }
    db = open_database(store).open()
    try:
        insert_instance(db, target_url=target.url)
    finally:
        db.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "ingress_box", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: _answers(url + "/healthz"), 20, "serve to start")
        assert _post_generic(url, "slow-2").status_code == 202
        target.wait_for(1)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        # The attempt ends at its deadline; the rest of the shutdown takes a moment.
        assert time.monotonic() - sent <= 4 + 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
