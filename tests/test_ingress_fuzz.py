"""Hostile input over the whole pipeline: never a 500, and a 4xx never stores anything."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import box_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live import SECRET, add_instance
from signers import sign_generic
from starlette.testclient import TestClient

from ingress_box.app import create_app
from ingress_box.config import load_settings

PLUGINS = [
    "generic",
    "chatwoot",
    "stripe",
    "telegram",
    "meta",
    "twilio",
    "standard-webhooks",
    "github",
    "supabase",
    "nope",
]
ROUTES = ["events", "webhook", "messages", "updates", "x"]
ONE_APP = [HealthCheck.function_scoped_fixture]  # the module-scoped app is shared on purpose


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # One app for all examples: hypothesis runs hundreds of them.
    with tempfile.TemporaryDirectory() as folder:
        s = load_settings(
            {}, db_path=Path(folder) / "box.db", admin_token="t" * 16, max_body_bytes=2048
        )
        with TestClient(create_app(s, run_worker=False), raise_server_exceptions=False) as c:
            box = box_of(c)
            for plugin in PLUGINS[:-1]:
                add_instance(box, plugin=plugin, instance="main", verify_token="vt")
            yield c


def rows(client: TestClient) -> int:
    row = box_of(client).db.read_one("SELECT count(*) FROM deliveries")
    assert row is not None
    return int(row[0])


header_names = st.sampled_from(
    [
        "x-signature",
        "x-delivery",
        "x-conversation",
        "content-type",
        "x-chatwoot-signature",
        "x-chatwoot-timestamp",
        "stripe-signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-signature",
        "x-hub-signature-256",
        "x-twilio-signature",
        "x-telegram-bot-api-secret-token",
        "content-length",
        "x-github-delivery",
    ]
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


@settings(max_examples=300, deadline=None, suppress_health_check=ONE_APP)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    plugin=st.sampled_from(PLUGINS),
    instance=st.sampled_from(["main", "x", "a b", "ü", ""]),
    route=st.sampled_from(ROUTES),
    rest=st.text(max_size=30),
    headers=st.dictionaries(header_names, header_values, max_size=6),
    body=st.binary(max_size=4096),
    query=st.dictionaries(
        st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "bodySHA256", "x"]),
        st.text(max_size=20),
    ),
)
def test_no_request_causes_a_500_and_rejections_store_nothing(
    client: TestClient,
    method: str,
    plugin: str,
    instance: str,
    route: str,
    rest: str,
    headers: dict[str, str],
    body: bytes,
    query: dict[str, str],
) -> None:
    """Arbitrary methods, paths, headers, bodies and queries answer below 500."""
    headers.pop("content-length", None)  # let the client frame the body honestly
    path = f"/ingress/{quote(plugin)}/{quote(instance)}/{quote(route)}"
    if rest:
        path += "/" + quote(rest)
    before = rows(client)
    response = client.request(method, path, headers=headers, content=body, params=query)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert rows(client) == before


@settings(max_examples=150, deadline=None, suppress_health_check=ONE_APP)
@given(
    body=st.binary(max_size=2048),
    delivery=st.one_of(st.none(), st.text(max_size=80)),
    conversation=st.one_of(
        st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
    ),
)
def test_signed_garbage_is_accepted_once_and_acked_identically(
    client: TestClient, body: bytes, delivery: str | None, conversation: str | None
) -> None:
    """Any correctly signed bytes are stored once; a resend gets the same ack."""
    extra = {}
    if delivery is not None and delivery.isascii() and delivery.isprintable():
        extra["x-delivery"] = delivery
    if conversation is not None:
        extra["x-conversation"] = conversation
    headers = {"content-type": "application/json", **sign_generic(SECRET, body), **extra}
    first = client.post("/ingress/generic/main/events", content=body, headers=headers)
    again = client.post("/ingress/generic/main/events", content=body, headers=headers)
    assert first.status_code == 202, first.text
    assert (again.status_code, again.content) == (first.status_code, first.content)


def test_oversized_header_block_is_refused_without_a_500(client: TestClient) -> None:
    """A huge header value is verified like any other and refused with a 4xx."""
    body = b"{}"
    headers = {"content-type": "application/json", **sign_generic(SECRET, body)}
    headers["x-signature"] = "sha256=" + "a" * 60_000
    started = time.monotonic()
    response = client.post("/ingress/generic/main/events", content=body, headers=headers)
    assert 400 <= response.status_code < 500
    assert time.monotonic() - started < 5


# -- the ASGI edge: what a server could hand the app, straight to its ASGI callable -----------

segments = st.one_of(
    st.sampled_from([*PLUGINS, "main", *ROUTES, "", ".", ".."]),
    st.text(max_size=12),
)
raw_header_names = st.one_of(header_names.map(str.encode), st.binary(min_size=1, max_size=20))


async def call_asgi(
    client: TestClient, scope: dict[str, Any], chunks: list[bytes]
) -> list[dict[str, Any]]:
    """Run one request through the app's ASGI callable; the answer's messages."""
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or [b""])
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await client.app(scope, receive, send)  # type: ignore[arg-type]
    return sent


@settings(max_examples=300, deadline=None, suppress_health_check=ONE_APP)
@given(
    method=st.one_of(
        st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS"]),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=10),
    ),
    parts=st.lists(segments, max_size=6),
    trailing_slash=st.booleans(),
    query=st.binary(max_size=40),
    headers=st.lists(st.tuples(raw_header_names, st.binary(max_size=80)), max_size=8),
    chunks=st.lists(st.binary(max_size=600), max_size=4),
)
def test_nothing_a_server_can_hand_over_causes_a_5xx(
    client: TestClient,
    method: str,
    parts: list[str],
    trailing_slash: bool,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
) -> None:
    """Any path under /ingress/ (short, empty segments, surrogates), method, header bytes and
    body framing, given to the ASGI app as a server would: a 4xx at worst, nothing stored."""
    path = "/ingress/" + "/".join(parts) + ("/" if trailing_slash else "")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": quote(path, safe="/", errors="surrogateescape").encode("ascii"),
        "query_string": query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    before = rows(client)
    assert client.portal is not None
    sent = client.portal.call(call_asgi, client, scope, chunks)
    if not sent:  # the body ran out before the app was done reading: the client is gone
        return
    status = sent[0]["status"]
    assert status < 500, (path, sent)
    if status >= 400:
        assert rows(client) == before
