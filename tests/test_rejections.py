"""The rejected-request record: why a provider's calls fail, kept in memory, bounded, bodiless.

``GET /admin/instances/{plugin}/{instance}/rejections`` lists, under ``recent``, the instance's
last N rejections newest first, each with a machine-readable reason (its ``items`` are the
quarantine of test_quarantine.py, kept on disk). Everything goes through the real app over
HTTP; instances are created through the admin API.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import ADMIN_TOKEN, T0, Clock, Reply, box_of
from postgres import outside
from signers import sign_chatwoot, sign_generic, sign_stripe, sign_twilio
from starlette.testclient import TestClient

from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, load_settings
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SECRET = "rejections-test-secret-0123"
MARKER = "BODY-MARKER-7f3a9c"  # if this shows up in the record, a body leaked into it


@dataclass
class Harness:
    client: TestClient
    clock: Clock
    db_path: Path | DatabaseUrl

    def add(self, plugin: str, instance: str = "main", **fields: Any) -> None:
        response = self.client.post(
            "/admin/instances",
            headers=ADMIN,
            json={"plugin": plugin, "instance": instance, "secret": SECRET, **fields},
        )
        assert response.status_code == 201, response.text

    def post(self, url: str, body: bytes, **headers: str) -> Reply:
        reply: Reply = self.client.post(url, content=body, headers=headers)
        return reply

    def rejections(self, plugin: str = "generic", instance: str = "main") -> Any:
        response = self.client.get(
            f"/admin/instances/{plugin}/{instance}/rejections", headers=ADMIN
        )
        assert response.status_code == 200, response.text
        return response.json()

    def reasons(self, plugin: str = "generic", instance: str = "main") -> list[str]:
        return [item["reason"] for item in self.rejections(plugin, instance)["recent"]]

    def count(self, table: str) -> int:
        """Rows in ``table``, read from the store by a connection of our own."""
        with outside(self.box.db) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    @property
    def box(self) -> Box:
        return box_of(self.client)


OpenBox = Callable[..., Harness]


@pytest.fixture
def open_box(store: Path | DatabaseUrl, clock: Clock) -> Iterator[OpenBox]:
    """``open_box(environ=None, **settings)``: the app on the test's store."""
    with contextlib.ExitStack() as stack:

        def open_(environ: Mapping[str, str] | None = None, **overrides: Any) -> Harness:
            db_path = store
            settings = load_settings(
                environ or {}, db_path=db_path, admin_token=ADMIN_TOKEN, **overrides
            )
            client = stack.enter_context(
                TestClient(create_app(settings, clock=clock, run_worker=False))
            )
            return Harness(client, clock, db_path)

        yield open_


# -- each reason, as a provider would cause it ----------------------------------------------


def missing_signature(h: Harness) -> Reply:
    return h.post("/ingress/generic/main/events", b"{}")


def bad_signature(h: Harness) -> Reply:
    return h.post("/ingress/generic/main/events", b"{}", **sign_generic("wrong", b"{}"))


def body_too_large(h: Harness) -> Reply:
    body = b"x" * 2000  # over the 1024-byte cap these tests run with
    return h.post("/ingress/generic/main/events", body, **sign_generic(SECRET, body))


def body_too_large_streamed(h: Harness) -> Reply:
    """Chunked, with no Content-Length: the cap is enforced while reading."""

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"y" * 100

    reply: Reply = h.client.post(
        "/ingress/generic/main/events", content=chunks(), headers={"x-signature": "sha256=00"}
    )
    return reply


def stale_timestamp(h: Harness) -> Reply:
    body = b'{"event":"message_created"}'
    return h.post(
        "/ingress/chatwoot/main/events",
        body,
        **sign_chatwoot(SECRET, body, at=int(h.clock()) - 301),
    )


def challenge_failed(h: Harness) -> Reply:
    reply: Reply = h.client.get(
        "/ingress/meta/main/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": "not-the-token", "hub.challenge": "1"},
    )
    return reply


def twilio_signed_for(url: str) -> Callable[[Harness], Reply]:
    """A genuine Twilio request signed for ``url`` (the URL configured in Twilio's console)."""

    def send(h: Harness) -> Reply:
        body = urlencode({"From": "whatsapp:+16505551234", "Body": "hi"}).encode()
        return h.post(
            "/ingress/twilio/main/messages",
            body,
            **sign_twilio(SECRET, body, url=url),
            **{"content-type": "application/x-www-form-urlencoded"},
        )

    return send


def body_not_json(h: Harness) -> Reply:
    body = b"{not json"
    return h.post(
        "/ingress/stripe/main/events", body, **sign_stripe(SECRET, body, at=int(h.clock()))
    )


def method_not_allowed(h: Harness) -> Reply:
    reply: Reply = h.client.get("/ingress/generic/main/events")
    return reply


REASONS = [
    pytest.param("generic", missing_signature, 401, "missing_signature", {}, id="no-signature"),
    pytest.param("generic", bad_signature, 401, "bad_signature", {}, id="bad-signature"),
    pytest.param("generic", body_too_large, 413, "body_too_large", {}, id="body-too-large"),
    pytest.param(
        "generic", body_too_large_streamed, 413, "body_too_large", {}, id="body-too-large-streamed"
    ),
    pytest.param("chatwoot", stale_timestamp, 401, "stale_timestamp", {}, id="stale-timestamp"),
    pytest.param("meta", challenge_failed, 403, "challenge_failed", {}, id="challenge-failed"),
    pytest.param(
        "twilio",
        twilio_signed_for("https://hooks.example.com/ingress/twilio/main/messages"),
        401,
        "bad_signature",
        {},
        id="twilio-proxy-without-public-url",
    ),
    pytest.param("stripe", body_not_json, 400, "body_not_json", {}, id="body-not-json"),
    pytest.param("generic", method_not_allowed, 405, "method_not_allowed", {}, id="wrong-method"),
]


@pytest.mark.parametrize("plugin, cause, status, reason, settings", REASONS)
def test_each_rejection_is_listed_with_its_machine_readable_reason(
    open_box: OpenBox,
    plugin: str,
    cause: Callable[[Harness], Reply],
    status: int,
    reason: str,
    settings: dict[str, str],
) -> None:
    """The provider gets the status, and the record says why in the same words."""
    h = open_box(max_body_bytes=1024, **settings)
    h.add(plugin, verify_token="the-verify-token")
    reply = cause(h)
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == reason
    [item] = h.rejections(plugin)["recent"]
    route = {"meta": "webhook", "twilio": "messages"}.get(plugin, "events")
    assert item == {"received_at": T0, "route": route, "status": status, "reason": reason}


def test_rate_limited_requests_are_listed(open_box: OpenBox) -> None:
    """A verified request over the instance's rate is listed as rate_limited (429)."""
    h = open_box(rate_limit=0.01)  # one token, refilled every 100 s: the second must wait
    h.add("generic")
    body = b'{"n":1}'
    assert (
        h.post("/ingress/generic/main/events", body, **sign_generic(SECRET, body)).status_code
        == 202
    )
    body = b'{"n":2}'
    assert (
        h.post("/ingress/generic/main/events", body, **sign_generic(SECRET, body)).status_code
        == 429
    )
    assert h.reasons() == ["rate_limited"]


def test_rejections_are_listed_newest_first(open_box: OpenBox) -> None:
    """Several failures in a row come back newest first, with their times."""
    h = open_box(max_body_bytes=1024)
    h.add("generic")
    for cause in (missing_signature, bad_signature, body_too_large, method_not_allowed):
        cause(h)
        h.clock.advance(1)
    items = h.rejections()["recent"]
    assert [i["reason"] for i in items] == [
        "method_not_allowed",
        "body_too_large",
        "bad_signature",
        "missing_signature",
    ]
    assert [i["received_at"] for i in items] == [T0 + 3, T0 + 2, T0 + 1, T0]
    assert h.rejections()["next_cursor"] is None


def test_accepted_and_duplicate_requests_are_not_rejections(open_box: OpenBox) -> None:
    """Only refusals are recorded: a delivery and its retry leave the list empty."""
    h = open_box()
    h.add("generic")
    for _ in range(2):
        assert (
            h.post("/ingress/generic/main/events", b"{}", **sign_generic(SECRET, b"{}")).status_code
            == 202
        )
    assert h.reasons() == []


def test_rejections_are_kept_per_instance(open_box: OpenBox) -> None:
    """One instance's failures do not show up under another's."""
    h = open_box()
    h.add("generic", "shop")
    h.add("generic", "blog")
    h.post("/ingress/generic/shop/events", b"{}")
    assert h.reasons(instance="shop") == ["missing_signature"]
    assert h.reasons(instance="blog") == []


# -- bounded, bodiless, memory only ---------------------------------------------------------


def test_the_record_keeps_exactly_the_last_n(open_box: OpenBox) -> None:
    """With rejections_kept=5, eight failures leave the five newest."""
    h = open_box(rejections_kept=5)
    h.add("generic")
    for _ in range(8):
        missing_signature(h)
        h.clock.advance(1)
    assert [i["received_at"] for i in h.rejections()["recent"]] == [T0 + n for n in (7, 6, 5, 4, 3)]


def test_the_default_cap_is_50(open_box: OpenBox) -> None:
    """Without configuration, sixty failures leave fifty."""
    h = open_box()
    h.add("generic")
    for _ in range(60):
        missing_signature(h)
    assert len(h.rejections()["recent"]) == 50


def test_the_cap_is_read_from_the_environment(open_box: OpenBox) -> None:
    """INGRESS_BOX_REJECTIONS_KEPT sets the cap."""
    h = open_box({"INGRESS_BOX_REJECTIONS_KEPT": "3"})
    h.add("generic")
    for _ in range(10):
        missing_signature(h)
    assert len(h.rejections()["recent"]) == 3


def test_the_record_holds_no_body_and_no_header_values(open_box: OpenBox) -> None:
    """Bodies, signatures and other header values never reach the record."""
    h = open_box(max_body_bytes=1024)
    h.add("generic")
    small = json.dumps({"text": MARKER}).encode()
    h.post(
        "/ingress/generic/main/events",
        small,
        **{"x-signature": "sha256=" + MARKER, "x-delivery": MARKER, "authorization": MARKER},
    )
    big = (MARKER * 200).encode()
    h.post("/ingress/generic/main/events", big, **sign_generic(SECRET, big))
    listing = h.rejections()
    assert len(listing["recent"]) == 2
    assert all(
        set(item) == {"received_at", "route", "status", "reason"} for item in listing["recent"]
    )
    assert MARKER not in json.dumps(listing)


def test_a_flood_of_bad_requests_writes_nothing_to_disk(open_box: OpenBox) -> None:
    """With the quarantine off, hundreds of refused requests leave the deliveries table empty
    and the file unchanged (with it on, test_quarantine.py bounds what a flood stores)."""
    h = open_box(max_body_bytes=1024, quarantine_kept=0)
    h.add("generic")
    h.add("chatwoot")
    # The SQLite file and its WAL; on PostgreSQL the row counts below say it.
    path = h.db_path
    files = [path, path.with_name(path.name + "-wal")] if isinstance(path, Path) else []
    sizes = [f.stat().st_size if f.exists() else 0 for f in files]
    for n in range(100):
        for cause in (missing_signature, bad_signature, body_too_large, stale_timestamp):
            assert cause(h).status_code in (401, 413)
        h.post(
            "/ingress/generic/main/events",
            f'{{"n":{n},"m":"{MARKER}"}}'.encode(),
            **{"x-signature": "sha256=" + "0" * 64},
        )
    assert (h.count("deliveries"), h.count("outbox")) == (0, 0)
    assert [f.stat().st_size if f.exists() else 0 for f in files] == sizes
    assert len(h.rejections()["recent"]) == 50


def test_unknown_instances_add_nothing_to_the_record(open_box: OpenBox) -> None:
    """Requests to instances that do not exist are 404s that cost no memory per made-up id."""
    h = open_box()
    h.add("generic")
    for n in range(20):
        assert h.post(f"/ingress/generic/made-up-{n}/events", b"{}").status_code == 404
    assert h.box.ingress.rejections == {}
