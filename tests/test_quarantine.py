"""Quarantine and admission: a request a known instance refused for its signature or timestamp is
kept on disk (bounded), listed, and admitted once the secret is fixed; and calls to ingress URLs
that name nothing are counted.

Everything runs through the real app over HTTP on a real SQLite file; instances are created and
rotated through the admin API. Keeping is not waited for by the refusal, so a test that reads
the quarantine first lets the writer finish what is queued (:meth:`Harness.settle`: one write
through the same FIFO writer).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from clirun import ok, run
from conftest import ADMIN_TOKEN, T0, Clock, Reply, box_of
from fake_target import FakeTarget
from postgres import write_locked
from signers import sign_generic, sign_stripe, sign_telegram, sign_twilio
from starlette.testclient import TestClient

from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, load_settings
from ingress_box.quarantine import RATE_PER_SECOND

pytestmark = pytest.mark.both_stores

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SECRET = "quarantine-test-secret-01"  # what the box is configured with at first
PROVIDER = "the-secret-the-provider-has"  # what the provider really signs with
MARKER = "CREDENTIAL-MARKER-5d1e"  # must never be found in the stored row
EVENTS = "/ingress/generic/main/events"


@dataclass
class Harness:
    client: TestClient
    clock: Clock
    db_path: Path | DatabaseUrl

    def add(self, plugin: str = "generic", instance: str = "main", **fields: Any) -> None:
        response = self.client.post(
            "/admin/instances",
            headers=ADMIN,
            json={"plugin": plugin, "instance": instance, "secret": SECRET, **fields},
        )
        assert response.status_code == 201, response.text

    def post(self, url: str, body: bytes, **headers: str) -> Reply:
        reply: Reply = self.client.post(url, content=body, headers=headers)
        return reply

    def wrong(self, body: bytes = b'{"n":1}', url: str = EVENTS) -> Reply:
        """A request signed with the provider's secret, which the box does not have (yet)."""
        reply = self.post(url, body, **sign_generic(PROVIDER, body))
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "bad_signature"
        return reply

    def settle(self) -> None:
        """Wait until every write queued so far is committed (the writer runs them in order)."""
        box_of(self.client).db.write(lambda conn: None)

    def kept(self, plugin: str = "generic", instance: str = "main", **query: str) -> Any:
        self.settle()
        response = self.client.get(
            f"/admin/instances/{plugin}/{instance}/rejections", headers=ADMIN, params=query
        )
        assert response.status_code == 200, response.text
        return response.json()

    def admit(self, rejection_id: int, plugin: str = "generic", instance: str = "main") -> Reply:
        reply: Reply = self.client.post(
            f"/admin/instances/{plugin}/{instance}/rejections/{rejection_id}/admit", headers=ADMIN
        )
        return reply

    def rotate(self, secret: str, plugin: str = "generic", instance: str = "main") -> None:
        response = self.client.post(
            f"/admin/instances/{plugin}/{instance}/rotate-secret",
            headers=ADMIN,
            json={"secret": secret, "grace_seconds": 0},
        )
        assert response.status_code == 200, response.text

    def rows(self, sql: str) -> list[Any]:
        """Rows read from the store by a reader (not the writer)."""
        self.settle()
        return box_of(self.client).db.read(sql)

    def count(self, table: str) -> int:
        return int(self.rows(f"SELECT count(*) FROM {table}")[0][0])


OpenBox = Callable[..., Harness]


@pytest.fixture
def open_box(store: Path | DatabaseUrl, clock: Clock) -> Iterator[OpenBox]:
    """``open_box(**settings)``: the app (no worker unless ``run_worker=True``) on one file."""
    with contextlib.ExitStack() as stack:

        def open_(run_worker: bool = False, **overrides: Any) -> Harness:
            db_path = store
            settings = load_settings({}, db_path=db_path, admin_token=ADMIN_TOKEN, **overrides)
            app = create_app(settings, clock=clock, run_worker=run_worker)
            client = stack.enter_context(TestClient(app))
            return Harness(client, clock, db_path)

        yield open_


# -- keeping ---------------------------------------------------------------------------------


def test_a_wrong_secret_request_is_kept_and_listed(open_box: OpenBox) -> None:
    """A bad signature of a known instance is listed with its id, time, route, status, reason."""
    h = open_box()
    h.add()
    h.wrong()
    listing = h.kept()
    [item] = listing["items"]
    assert item == {
        "id": item["id"],
        "received_at": T0,
        "route": "events",
        "status": 401,
        "reason": "bad_signature",
    }
    assert isinstance(item["id"], int)
    assert listing["next_cursor"] is None


def test_refusals_that_no_secret_could_fix_are_not_kept(open_box: OpenBox) -> None:
    """A missing signature, a body over the cap or a wrong method are only in the memory record."""
    h = open_box(max_body_bytes=1024)
    h.add()
    assert h.post(EVENTS, b"{}").status_code == 401  # missing_signature
    assert h.post(EVENTS, b"x" * 2000, **sign_generic(PROVIDER, b"x" * 2000)).status_code == 413
    assert h.client.get(EVENTS).status_code == 405
    listing = h.kept()
    assert listing["items"] == []
    assert [r["reason"] for r in listing["recent"]] == [
        "method_not_allowed",
        "body_too_large",
        "missing_signature",
    ]


def test_unknown_and_disabled_instances_keep_nothing(open_box: OpenBox) -> None:
    """Only a known, enabled instance's refusals are kept: others are 404s that store nothing."""
    h = open_box()
    h.add("generic", "off", enabled=False)
    body = b'{"n":1}'
    for url in ("/ingress/generic/nope/events", "/ingress/generic/off/events"):
        assert h.post(url, body, **sign_generic(PROVIDER, body)).status_code == 404
    assert h.count("rejections") == 0


def test_a_page_of_kept_requests_is_newest_first_with_a_cursor(open_box: OpenBox) -> None:
    """limit and cursor page through the kept requests, newest first, like the other lists."""
    h = open_box()
    h.add()
    for n in range(3):
        h.wrong(b'{"n":%d}' % n)
        h.clock.advance(1)
    first = h.kept(limit="2")
    assert [i["received_at"] for i in first["items"]] == [T0 + 2, T0 + 1]
    rest = h.kept(limit="2", cursor=first["next_cursor"])
    assert [i["received_at"] for i in rest["items"]] == [T0]
    assert rest["next_cursor"] is None


def test_one_kept_request_shows_its_headers_with_credentials_masked(open_box: OpenBox) -> None:
    """GET .../rejections/{id} shows method, subpath, headers and body; no credential shows."""
    h = open_box()
    h.add()
    body = b'{"hello":"world"}'
    h.post(
        EVENTS + "/extra?token=" + MARKER + "&page=2",
        body,
        **sign_generic(PROVIDER, body),
        **{"authorization": "Bearer " + MARKER, "x-delivery": "d-1"},
    )
    [item] = h.kept()["items"]
    shown = h.client.get(f"/admin/instances/generic/main/rejections/{item['id']}", headers=ADMIN)
    assert shown.status_code == 200
    detail = shown.json()
    assert detail["method"] == "POST"
    assert detail["subpath"] == "extra?token=[redacted]&page=2"
    assert detail["body"] == body.decode()
    assert detail["headers"]["x-delivery"] == "d-1"
    assert detail["headers"]["authorization"] == "[redacted]"
    assert detail["headers"]["x-signature"] == "[redacted]"  # kept for admission, never shown
    assert MARKER not in shown.text


def test_credentials_are_not_stored_but_the_verification_headers_are(open_box: OpenBox) -> None:
    """The row keeps the signature (admission verifies it) and drops Authorization, cookies,
    api keys and secrets in the query."""
    h = open_box()
    h.add()
    body = b'{"n":1}'
    signed = sign_generic(PROVIDER, body)
    h.post(
        EVENTS + "?api_key=" + MARKER,
        body,
        **signed,
        **{"authorization": MARKER, "cookie": "s=" + MARKER, "x-api-key": MARKER},
    )
    [row] = h.rows("SELECT headers, subpath, url FROM rejections")
    headers = json.loads(row["headers"])
    assert headers["x-signature"] == signed["x-signature"]
    assert {headers[n] for n in ("authorization", "cookie", "x-api-key")} == {"[redacted]"}
    assert MARKER not in json.dumps(dict(row))


# -- bounds ----------------------------------------------------------------------------------


def test_the_count_cap_per_instance_drops_the_oldest(open_box: OpenBox) -> None:
    """With quarantine_kept=3, five refusals leave the three newest, per instance."""
    h = open_box(quarantine_kept=3)
    h.add("generic", "main")
    h.add("generic", "other")
    h.wrong(url="/ingress/generic/other/events")
    for n in range(5):
        h.wrong(b'{"n":%d}' % n)
        h.clock.advance(1)
    assert [i["received_at"] for i in h.kept()["items"]] == [T0 + 4, T0 + 3, T0 + 2]
    assert len(h.kept(instance="other")["items"]) == 1


def test_the_byte_cap_over_all_instances_drops_the_oldest(open_box: OpenBox) -> None:
    """Past quarantine_bytes in all, the oldest rows go, whichever instance they belong to."""
    cap = 6000  # three of these rows fit (about 1.8 KB each with headers and URL), not four
    h = open_box(quarantine_bytes=cap)
    h.add("generic", "a")
    h.add("generic", "b")
    for n in range(4):
        body = (b'{"n":%d,"pad":"' % n) + b"p" * 1500 + b'"}'
        h.wrong(body, url="/ingress/generic/" + "ab"[n % 2] + "/events")
        h.clock.advance(1)
    rows = h.rows("SELECT instance_id, received_at, size FROM rejections ORDER BY id")
    assert sum(r["size"] for r in rows) <= cap
    assert [(r["instance_id"], r["received_at"]) for r in rows] == [
        ("b", T0 + 1),
        ("a", T0 + 2),
        ("b", T0 + 3),
    ]


def test_a_request_larger_than_the_byte_cap_is_not_kept(open_box: OpenBox) -> None:
    """One request bigger than the whole cap is refused as ever and kept nowhere."""
    h = open_box(quarantine_bytes=100)
    h.add()
    h.wrong(b"x" * 200)
    assert h.count("rejections") == 0


def test_the_refusal_does_not_wait_for_a_file_it_cannot_write(open_box: OpenBox) -> None:
    """Another process holds the write lock: the 401 comes at once (not after the busy
    timeout), and once the lock is gone the box keeps refusing and accepting as ever."""
    h = open_box(busy_timeout_seconds=3)
    h.add()
    h.settle()
    with write_locked(box_of(h.client).db):
        started = time.monotonic()
        h.wrong()
        assert time.monotonic() - started < 1.5
    h.wrong(b'{"n":2}')
    body = b'{"ok":1}'
    assert h.post(EVENTS, body, **sign_generic(SECRET, body)).status_code == 202


def test_quarantine_kept_0_keeps_nothing(open_box: OpenBox) -> None:
    """The switch off: refusals are answered and remembered in memory, and nothing is written."""
    h = open_box(quarantine_kept=0)
    h.add()
    h.wrong()
    assert h.count("rejections") == 0
    assert [r["reason"] for r in h.kept()["recent"]] == ["bad_signature"]


def test_a_flood_of_bad_signatures_stays_within_the_caps_while_valid_requests_pass(
    open_box: OpenBox,
) -> None:
    """Hundreds of wrong signatures interleaved with valid requests: every valid one is
    accepted, every wrong one refused, and storage stays within both caps."""
    h = open_box(quarantine_kept=20, quarantine_bytes=20_000)
    h.add()
    h.add("generic", "side")
    accepted = 0
    for n in range(300):
        url = EVENTS if n % 3 else "/ingress/generic/side/events"
        bad = (b'{"n":%d,"pad":"' % n) + b"b" * 900 + b'"}'
        assert h.post(url, bad, **sign_generic(PROVIDER, bad)).status_code == 401
        if n % 10 == 0:
            good = b'{"good":%d}' % n
            reply = h.post(EVENTS, good, **sign_generic(SECRET, good))
            assert reply.status_code == 202, reply.text
            accepted += 1
    sizes = h.rows("SELECT instance_id, count(*) AS n, sum(size) AS b FROM rejections GROUP BY 1")
    assert all(r["n"] <= 20 for r in sizes)
    assert sum(r["b"] for r in sizes) <= 20_000
    assert h.count("deliveries") == accepted == 30


def test_keeping_is_capped_per_instance_per_second(open_box: OpenBox) -> None:
    """A burst of wrong signatures keeps at most the rate cap's burst plus its refill, so a
    flood is not a write per request."""
    h = open_box()
    h.add()
    started = time.monotonic()
    for n in range(60):
        h.wrong(b'{"n":%d}' % n)
    elapsed = time.monotonic() - started
    allowed = RATE_PER_SECOND * (1 + elapsed) + 1
    assert h.count("rejections") <= min(allowed, 60)
    assert h.count("rejections") >= RATE_PER_SECOND  # the first burst is kept


def test_kept_requests_survive_a_restart(store: Path | DatabaseUrl, clock: Clock) -> None:
    """Closing the app and opening the same store again lists the same kept request."""
    settings = load_settings({}, db_path=store, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings, clock=clock, run_worker=False)) as client:
        h = Harness(client, clock, settings.db_path)
        h.add()
        h.wrong()
        before = h.kept()["items"]
    with TestClient(create_app(settings, clock=clock, run_worker=False)) as client:
        assert Harness(client, clock, settings.db_path).kept()["items"] == before
    assert len(before) == 1


def test_deleting_an_instance_drops_its_kept_requests(open_box: OpenBox) -> None:
    """A new instance of the same id starts with an empty quarantine."""
    h = open_box()
    h.add()
    h.wrong()
    h.settle()
    assert h.client.delete("/admin/instances/generic/main", headers=ADMIN).status_code == 204
    assert h.count("rejections") == 0


# -- admission -------------------------------------------------------------------------------


def test_admitting_after_the_secret_is_fixed_delivers_once(
    open_box: OpenBox, target: FakeTarget
) -> None:
    """Rotate to the provider's secret, admit: 200 with the delivery, which reaches the target
    once; the kept row is gone, and admitting it again is 404."""
    h = open_box(run_worker=True)
    h.add(target_url=target.url)
    body = b'{"order":42}'
    h.wrong(body)
    [item] = h.kept()["items"]
    h.rotate(PROVIDER)
    reply = h.admit(item["id"])
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["admitted"] is True and data["duplicate"] is False
    delivery = data["delivery"]
    assert delivery["plugin"] == "generic" and delivery["route"] == "events"
    assert delivery["state"] in ("pending", "delivered")
    [got] = target.wait_for(1)
    assert got.body == body
    assert got.headers["webhook-id"] == delivery["id"]
    assert h.kept()["items"] == []
    assert h.admit(item["id"]).status_code == 404
    assert h.count("deliveries") == 1


def test_admitting_with_the_secret_still_wrong_is_409_still_rejected(open_box: OpenBox) -> None:
    """Nothing changed: 409 still_rejected with the reason, and the request stays kept."""
    h = open_box()
    h.add()
    h.wrong()
    [item] = h.kept()["items"]
    reply = h.admit(item["id"])
    assert reply.status_code == 409
    error = reply.json()["error"]
    assert error["code"] == "still_rejected"
    assert error["message"].startswith("bad_signature")
    assert h.kept()["items"] == [item]
    assert h.count("deliveries") == 0


def test_an_already_accepted_request_is_admitted_as_the_duplicate_it_is(
    open_box: OpenBox,
) -> None:
    """The provider's retry got through after the fix: admitting the kept copy adds nothing."""
    h = open_box()
    h.add()
    body = b'{"n":7}'
    h.wrong(body)
    [item] = h.kept()["items"]
    h.rotate(PROVIDER)
    assert h.post(EVENTS, body, **sign_generic(PROVIDER, body)).status_code == 202
    reply = h.admit(item["id"])
    assert reply.status_code == 200, reply.text
    assert reply.json()["duplicate"] is True
    assert h.count("deliveries") == 1


def test_admitting_an_unknown_id_is_404(open_box: OpenBox) -> None:
    """An id that was never kept, or is not a number, or is another instance's: 404."""
    h = open_box()
    h.add()
    h.add("generic", "other")
    h.wrong()
    [item] = h.kept()["items"]
    assert h.admit(999).status_code == 404
    assert (
        h.client.post("/admin/instances/generic/main/rejections/x/admit", headers=ADMIN).json()[
            "error"
        ]["code"]
        == "not_found"
    )
    assert h.admit(item["id"], instance="other").status_code == 404


def test_a_stripe_request_admitted_an_hour_later_verifies_against_its_arrival(
    open_box: OpenBox,
) -> None:
    """The tolerance is measured from when the request arrived: fresh then, admitted now."""
    h = open_box()
    h.add("stripe")
    body = b'{"id":"evt_1","type":"charge.succeeded"}'
    refused = h.post("/ingress/stripe/main/events", body, **sign_stripe(PROVIDER, body, at=int(T0)))
    assert refused.json()["error"]["code"] == "bad_signature"
    h.clock.advance(3600)
    h.rotate(PROVIDER, plugin="stripe")
    [item] = h.kept("stripe")["items"]
    assert item["received_at"] == T0
    reply = h.admit(item["id"], plugin="stripe")
    assert reply.status_code == 200, reply.text
    assert reply.json()["delivery"]["provider_delivery_id"] == "evt_1"


def test_a_request_stale_at_arrival_stays_rejected(open_box: OpenBox) -> None:
    """Signed 301 s before it arrived: kept as stale_timestamp, and admission says so again."""
    h = open_box()
    h.add("stripe")
    body = b'{"id":"evt_2"}'
    stale = sign_stripe(SECRET, body, at=int(T0) - 301)
    refused = h.post("/ingress/stripe/main/events", body, **stale)
    assert refused.json()["error"]["code"] == "stale_timestamp"
    [item] = h.kept("stripe")["items"]
    reply = h.admit(item["id"], plugin="stripe")
    assert reply.status_code == 409
    assert reply.json()["error"]["message"].startswith("stale_timestamp")


def test_a_shared_secret_provider_is_admitted_with_its_token_kept(open_box: OpenBox) -> None:
    """Telegram's token header is the verification input: kept (never shown), so once the box
    has that secret the kept update verifies."""
    h = open_box()
    h.add("telegram")
    body = b'{"update_id":5,"message":{"chat":{"id":1}}}'
    sent = h.post("/ingress/telegram/main/updates", body, **sign_telegram(PROVIDER, body))
    assert sent.status_code == 401
    [item] = h.kept("telegram")["items"]
    shown = h.client.get(
        f"/admin/instances/telegram/main/rejections/{item['id']}", headers=ADMIN
    ).text
    assert PROVIDER not in shown
    h.rotate(PROVIDER, plugin="telegram")
    reply = h.admit(item["id"], plugin="telegram")
    assert reply.status_code == 200, reply.text
    assert reply.json()["delivery"]["provider_delivery_id"] == "5"


def test_a_twilio_request_refused_for_the_public_url_is_admitted_once_it_is_set(
    store: Path | DatabaseUrl, clock: Clock
) -> None:
    """Twilio signs the URL it calls: refused behind a proxy without INGRESS_BOX_PUBLIC_URL,
    kept, and admitted after a restart with the public URL set."""
    public = "https://hooks.example.com"
    db_path = store
    body = urlencode({"From": "whatsapp:+16505551234", "Body": "hi"}).encode()
    form = {"content-type": "application/x-www-form-urlencoded"}
    signed = sign_twilio(SECRET, body, url=public + "/ingress/twilio/main/messages")
    settings = load_settings({}, db_path=db_path, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings, clock=clock, run_worker=False)) as client:
        h = Harness(client, clock, db_path)
        h.add("twilio")
        assert h.post("/ingress/twilio/main/messages", body, **signed, **form).status_code == 401
        [item] = h.kept("twilio")["items"]
        assert h.admit(item["id"], plugin="twilio").status_code == 409
    fixed = settings.replace(public_url=public)
    with TestClient(create_app(fixed, clock=clock, run_worker=False)) as client:
        reply = Harness(client, clock, db_path).admit(item["id"], plugin="twilio")
        assert reply.status_code == 200, reply.text


def test_a_bad_cursor_on_the_kept_list_is_400(open_box: OpenBox) -> None:
    """The list's cursor is checked like the other lists' cursors."""
    h = open_box()
    h.add()
    response = h.client.get(
        "/admin/instances/generic/main/rejections", headers=ADMIN, params={"cursor": "!!!"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


# -- the CLI ---------------------------------------------------------------------------------


def test_the_cli_lists_and_admits_kept_requests(open_box: OpenBox) -> None:
    """instances rejections --json lists what the API lists; instances admit --json admits."""
    h = open_box()
    h.add()
    h.wrong()
    [item] = h.kept()["items"]
    db = str(h.db_path)
    listed = json.loads(
        ok("instances", "rejections", "generic", "main", "--db", db, "--json").stdout
    )
    assert listed == {"items": [item], "next_cursor": None}
    table = ok("instances", "rejections", "generic", "main", "--db", db).stdout
    assert "bad_signature" in table and str(item["id"]) in table

    still = run("instances", "admit", "generic", "main", str(item["id"]), "--db", db)
    assert still.exit_code == 1
    assert "bad_signature" in still.output

    h.rotate(PROVIDER)
    admitted = json.loads(
        ok("instances", "admit", "generic", "main", str(item["id"]), "--db", db, "--json").stdout
    )
    assert admitted["admitted"] is True
    assert admitted["delivery"]["state"] == "pending"
    assert h.count("deliveries") == 1
    assert h.kept()["items"] == []


def test_the_cli_on_an_unknown_instance_or_id_exits_1(open_box: OpenBox) -> None:
    """A missing instance or kept id is a one-line failure."""
    h = open_box()
    h.add()
    db = str(h.db_path)
    assert run("instances", "rejections", "generic", "nope", "--db", db).exit_code == 1
    assert run("instances", "admit", "generic", "main", "12", "--db", db).exit_code == 1


# -- mistyped URLs ---------------------------------------------------------------------------


def metric_lines(h: Harness, name: str) -> dict[str, float]:
    text = h.client.get("/metrics", headers=ADMIN).text
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :]] = float(value)
    return found


def test_unknown_plugin_instance_and_route_hits_are_counted_per_prefix(open_box: OpenBox) -> None:
    """Each kind of miss counts under its /ingress/<plugin>/<instance> prefix, on /metrics and
    in GET /admin/unmatched."""
    h = open_box()
    h.add()
    for path in (
        "/ingress/nope/main/events",
        "/ingress/nope/main/events",
        "/ingress/generic/typo/events",
        "/ingress/generic/main/evnets",
        "/ingress/generic",
    ):
        assert h.post(path, b"{}").status_code == 404
    assert metric_lines(h, "ingress_box_unmatched_requests_total") == {
        '{prefix="/ingress/nope/main"}': 2.0,
        '{prefix="/ingress/generic/typo"}': 1.0,
        '{prefix="/ingress/generic/main"}': 1.0,
        '{prefix="/ingress/generic"}': 1.0,
    }
    listing = h.client.get("/admin/unmatched", headers=ADMIN).json()
    assert listing["items"][0] == {"prefix": "/ingress/nope/main", "count": 2}
    assert len(listing["items"]) == 4


def test_unmatched_prefixes_are_bounded_with_an_other_bucket(open_box: OpenBox) -> None:
    """A scanner trying 150 names leaves at most 100 prefixes, the rest counted as other."""
    h = open_box()
    for n in range(150):
        assert h.post(f"/ingress/generic/scan-{n}-{'x' * 100}/events", b"").status_code == 404
    counts = {
        i["prefix"]: i["count"]
        for i in h.client.get("/admin/unmatched", headers=ADMIN).json()["items"]
    }
    assert len(counts) == 101
    assert counts["other"] == 50
    assert all(len(p) <= len("/ingress/") + 64 + 1 + 64 for p in counts)
