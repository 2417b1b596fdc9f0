"""Every built-in provider through the real app, signed the way that provider signs.

Each request goes over HTTP to ``create_app`` (lifespan running, a real SQLite file or a
PostgreSQL schema), against an instance created through ``POST /admin/instances``, signed by
``signers.py`` (the providers' own libraries where they exist, else their documented recipe
checked against the library or the documented example; svix signs its own test here). What is
asserted is what the provider sees (status, content type, body) and what lands in the
``deliveries`` table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import pytest
import stripe
import svix.webhooks
from conftest import ADMIN_TOKEN, Clock
from conftest import Reply as TextReply
from signers import (
    Signer,
    hmac_hex,
    sign_chatwoot,
    sign_generic,
    sign_github,
    sign_meta,
    sign_standard,
    sign_stripe,
    sign_supabase,
    sign_telegram,
    sign_twilio,
)
from starlette.testclient import TestClient
from twilio.request_validator import RequestValidator

from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, load_settings
from ingress_box.store.postgres import connect as pg_connect

pytestmark = pytest.mark.both_stores

TEST_SERVER = "http://testserver"  # the base URL Starlette's TestClient calls
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WHSEC_OTHER = "whsec_c2Vjb25kLXNlY3JldC1mb3ItdGVzdHMtb25seQ=="
TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
WA_ID = "16505551234"  # the customer's WhatsApp id in every Meta sample


class Reply(TextReply, Protocol):
    """A TestClient answer, raw bytes included (acks are compared byte for byte)."""

    @property
    def content(self) -> bytes: ...


def meta_event(kind: str, text: str = "hello") -> bytes:
    """A WhatsApp Cloud API notification: an inbound message, or a status of one we sent."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
    }
    if kind == "message":
        value["contacts"] = [{"profile": {"name": "Sheena"}, "wa_id": WA_ID}]
        value["messages"] = [
            {
                "from": WA_ID,
                "id": "wamid.IN1",
                "timestamp": "1700000000",
                "type": "text",
                "text": {"body": text},
            }
        ]
    else:
        value["statuses"] = [
            {"id": "wamid.OUT1", "status": kind, "timestamp": "1700000001", "recipient_id": WA_ID}
        ]
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}
            ],
        }
    ).encode()


def stripe_event(event_id: str = "evt_1", pending_webhooks: int = 1) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_1", "description": "hello"}},
            "pending_webhooks": pending_webhooks,
        }
    ).encode()


def telegram_update(update_id: int = 10000, text: str = "hello") -> bytes:
    return json.dumps(
        {
            "update_id": update_id,
            "message": {
                "message_id": 1,
                "date": 1700000000,
                "text": text,
                "chat": {"id": -1001234567890, "type": "supergroup"},
                "from": {"id": 42, "is_bot": False, "first_name": "Ann"},
            },
        }
    ).encode()


def twilio_form(body: str = "hello", sid: str = "SM1") -> bytes:
    return urlencode(
        {
            "MessageSid": sid,
            "AccountSid": "AC1",
            "From": "whatsapp:+16505551234",
            "To": "whatsapp:+14155238886",
            "Body": body,
            "NumMedia": "0",
        }
    ).encode()


@dataclass(frozen=True)
class Provider:
    """A built-in plugin and how its provider talks to it."""

    plugin: str
    route: str
    secret: str  # in the form the provider hands it out
    wrong_secret: str
    sample: bytes  # a typical event; holds b"hello" so a test can tamper with it
    content_type: str
    sign: Signer
    ack_status: int = 202
    ack_type: str = "application/json"
    ack_body: bytes | None = None  # None: the default {"status":"accepted","id":...}
    timestamped: bool = False  # the signature covers a timestamp with a tolerance
    body_signed: bool = True  # False: Telegram's token says who, not what

    @property
    def path(self) -> str:
        return f"/ingress/{self.plugin}/main/{self.route}"

    def __str__(self) -> str:
        return self.plugin


JSON = "application/json"
PROVIDERS = {
    p.plugin: p
    for p in [
        Provider(
            "meta",
            "webhook",
            "meta-app-secret-0123456789",
            "another-app-secret",
            meta_event("message"),
            JSON,
            sign_meta,
            ack_status=200,
        ),
        Provider(
            "twilio",
            "messages",
            "12345678901234567890123456789012",
            "0" * 32,
            twilio_form(),
            "application/x-www-form-urlencoded",
            sign_twilio,
            ack_status=200,
            ack_type="text/xml",
            ack_body=TWIML,
        ),
        Provider(
            "stripe",
            "events",
            "whsec_test_0123456789abcdef",
            "whsec_test_other",
            stripe_event(),
            JSON,
            sign_stripe,
            timestamped=True,
        ),
        Provider(
            "github",
            "events",
            "It's a Secret to Everybody",
            "not the secret",
            b'{"zen":"hello","hook_id":1}',
            JSON,
            sign_github,
        ),
        Provider(
            "telegram",
            "updates",
            "tg-secret_token-0123456789",
            "tg-other-token",
            telegram_update(),
            JSON,
            sign_telegram,
            body_signed=False,
        ),
        Provider(
            "supabase",
            "events",
            "v1," + WHSEC,
            "v1," + WHSEC_OTHER,
            b'{"user":{"id":"u1","email":"a@example.com"},"email_data":{"token":"hello"}}',
            JSON,
            sign_supabase,
            timestamped=True,
        ),
        Provider(
            "standard-webhooks",
            "events",
            WHSEC,
            WHSEC_OTHER,
            b'{"type":"message.created","data":{"text":"hello"}}',
            JSON,
            sign_standard,
            timestamped=True,
        ),
        Provider(
            "chatwoot",
            "events",
            "chatwoot-webhook-secret-0123",
            "chatwoot-other-secret",
            b'{"event":"message_created","id":99,"content":"hello","conversation":{"id":7}}',
            JSON,
            sign_chatwoot,
            timestamped=True,
        ),
        Provider(
            "generic",
            "events",
            "generic-shared-secret-0123",
            "generic-other-secret",
            b'{"event":"message","text":"hello"}',
            JSON,
            sign_generic,
        ),
    ]
}
ALL = list(PROVIDERS.values())


# -- the box under test ---------------------------------------------------------------------


@dataclass
class Harness:
    """The running app plus the few moves every test makes: add an instance, send, read rows."""

    client: TestClient
    clock: Clock
    store: Path | DatabaseUrl
    created: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, p: Provider, **fields: Any) -> dict[str, Any]:
        """Create the provider's `main` instance through the admin API."""
        payload = {
            "plugin": p.plugin,
            "instance": "main",
            "secret": p.secret,
            "target_url": "http://127.0.0.1:9/hook",
            **fields,
        }
        response = self.client.post("/admin/instances", headers=ADMIN, json=payload)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        self.created[p.plugin] = data
        return data

    def send(
        self,
        p: Provider,
        body: bytes | None = None,
        *,
        signed: bytes | None = None,
        secret: str | None = None,
        age: float = 0,
        msg_id: str | None = None,
        query: str = "",
        signed_url: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """POST ``body`` (default: the sample) signed over ``signed`` (default: the same bytes)
        ``age`` seconds ago, as the provider would."""
        body = p.sample if body is None else body
        target = p.path + (f"?{query}" if query else "")
        signature = p.sign(
            secret or p.secret,
            body if signed is None else signed,
            at=int(self.clock() - age),
            msg_id=msg_id,
            url=signed_url or TEST_SERVER + target,
        )
        sent = {"content-type": p.content_type, **signature, **(headers or {})}
        reply: Reply = self.client.post(target, content=body, headers=sent)
        return reply

    def rows(self) -> list[Any]:
        """The deliveries table, read from the store by a connection of our own."""
        sql = "SELECT * FROM deliveries ORDER BY seq"
        if isinstance(self.store, Path):
            with contextlib.closing(sqlite3.connect(self.store)) as conn:
                conn.row_factory = sqlite3.Row
                return conn.execute(sql).fetchall()
        pg = pg_connect(self.store)
        try:
            return list(pg.execute(sql).fetchall())
        finally:
            pg.close()


OpenBox = Callable[..., Harness]


@pytest.fixture
def open_box(store: Path | DatabaseUrl, clock: Clock) -> Iterator[OpenBox]:
    """``open_box(environ=None, **settings)``: the app on the test's (fresh) store, lifespan on;
    once per test."""
    opened = False
    with contextlib.ExitStack() as stack:

        def open_(environ: Mapping[str, str] | None = None, **overrides: Any) -> Harness:
            nonlocal opened
            assert not opened, "one box per test: its store is fresh only once"
            opened = True
            settings = load_settings(
                environ or {}, db_path=store, admin_token=ADMIN_TOKEN, **overrides
            )
            client = stack.enter_context(
                TestClient(create_app(settings, clock=clock, run_worker=False))
            )
            return Harness(client, clock, store)

        yield open_


@pytest.fixture
def harness(open_box: OpenBox) -> Harness:
    return open_box()


def reason(reply: Reply) -> str:
    code: str = reply.json()["error"]["code"]
    return code


# -- success, tampering, wrong secret, stale timestamps --------------------------------------


@pytest.mark.parametrize("p", ALL, ids=str)
def test_signed_event_gets_the_route_ack_and_is_stored_verbatim(
    harness: Harness, p: Provider
) -> None:
    """A correctly signed event gets the provider's ack, and its exact bytes are stored."""
    harness.add(p)
    reply = harness.send(p)
    assert reply.status_code == p.ack_status
    assert reply.headers["content-type"].split(";")[0] == p.ack_type
    [row] = harness.rows()
    if p.ack_body is None:
        assert reply.json() == {"status": "accepted", "id": row["id"]}
    else:
        assert reply.content == p.ack_body
    assert (row["plugin_id"], row["route"], bytes(row["body"])) == (p.plugin, p.route, p.sample)


@pytest.mark.parametrize("p", ALL, ids=str)
def test_stored_headers_hold_no_credential(harness: Harness, p: Provider) -> None:
    """The signature headers (and Telegram's token, which is the secret itself) are redacted."""
    harness.add(p)
    sent = p.sign(p.secret, p.sample, at=int(harness.clock()), url=TEST_SERVER + p.path)
    assert harness.send(p).status_code == p.ack_status
    stored = json.loads(harness.rows()[0]["headers"])
    for name in sent:
        if "signature" in name or "secret" in name:
            assert stored[name] == "[redacted]", name
    assert p.secret not in json.dumps(stored)


@pytest.mark.parametrize("p", [p for p in ALL if p.body_signed], ids=str)
def test_tampered_body_is_401_and_stores_nothing(harness: Harness, p: Provider) -> None:
    """One word changed after signing fails verification."""
    harness.add(p)
    reply = harness.send(p, p.sample.replace(b"hello", b"jello"), signed=p.sample)
    assert reply.status_code == 401
    assert reason(reply) == "bad_signature"
    assert harness.rows() == []


@pytest.mark.parametrize("p", ALL, ids=str)
def test_wrong_secret_is_401_and_stores_nothing(harness: Harness, p: Provider) -> None:
    """A request signed with another secret fails verification."""
    harness.add(p)
    reply = harness.send(p, secret=p.wrong_secret)
    assert reply.status_code == 401
    assert reason(reply) == "bad_signature"
    assert harness.rows() == []


@pytest.mark.parametrize("p", [p for p in ALL if p.timestamped], ids=str)
def test_stale_timestamp_is_401(harness: Harness, p: Provider) -> None:
    """A genuine signature made 301 s ago is past the 300 s tolerance (a replay)."""
    harness.add(p)
    reply = harness.send(p, age=301)
    assert reply.status_code == 401
    assert reason(reply) == "stale_timestamp"
    assert harness.rows() == []


@pytest.mark.parametrize("p", [p for p in ALL if p.timestamped], ids=str)
def test_timestamp_within_the_tolerance_passes(harness: Harness, p: Provider) -> None:
    """A signature made 299 s ago (a slow retry path) still verifies."""
    harness.add(p)
    assert harness.send(p, age=299).status_code == p.ack_status


def test_telegram_token_names_the_sender_but_does_not_cover_the_body(harness: Harness) -> None:
    """Telegram signs nothing: with the right secret_token a changed body is accepted."""
    p = PROVIDERS["telegram"]
    harness.add(p)
    assert harness.send(p, telegram_update(text="jello")).status_code == 202


# -- dedup: which retries are duplicates -----------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    body: bytes
    msg_id: str | None = None


@dataclass(frozen=True)
class DedupCase:
    plugin: str
    first: Attempt
    retry: Attempt
    duplicate: bool
    why: str

    def __str__(self) -> str:
        return f"{self.plugin}-{self.why}"


DEDUP_CASES = [
    DedupCase(
        "stripe",
        Attempt(stripe_event(pending_webhooks=2)),
        Attempt(stripe_event(pending_webhooks=1)),
        True,
        "retry-changes-body-keeps-id",
    ),
    DedupCase(
        "stripe",
        Attempt(stripe_event("evt_1")),
        Attempt(stripe_event("evt_2")),
        False,
        "another-event",
    ),
    DedupCase(
        "supabase",
        Attempt(PROVIDERS["supabase"].sample, "msg_a"),
        Attempt(PROVIDERS["supabase"].sample, "msg_b"),
        True,
        "re-minted-webhook-id",
    ),
    DedupCase(
        "supabase",
        Attempt(b'{"n":1}', "msg_a"),
        Attempt(b'{"n":2}', "msg_a"),
        False,
        "same-id-other-body",
    ),
    DedupCase(
        "standard-webhooks",
        Attempt(b'{"n":1}', "msg_a"),
        Attempt(b'{"n":2}', "msg_a"),
        True,
        "same-webhook-id",
    ),
    DedupCase(
        "standard-webhooks",
        Attempt(b'{"n":1}', "msg_a"),
        Attempt(b'{"n":1}', "msg_b"),
        False,
        "other-webhook-id",
    ),
    DedupCase(
        "twilio",
        Attempt(twilio_form("hello"), "tok-1"),
        Attempt(twilio_form("other"), "tok-1"),
        True,
        "same-idempotency-token",
    ),
    DedupCase(
        "twilio",
        Attempt(twilio_form("hello"), "tok-1"),
        Attempt(twilio_form("hello"), "tok-2"),
        False,
        "other-idempotency-token",
    ),
    DedupCase(
        "twilio",
        Attempt(twilio_form("hello")),
        Attempt(twilio_form("hello")),
        True,
        "no-token-same-body",
    ),
    DedupCase(
        "twilio",
        Attempt(twilio_form("hello")),
        Attempt(twilio_form("other")),
        False,
        "no-token-other-body",
    ),
    DedupCase(
        "telegram",
        Attempt(telegram_update(7, "hello")),
        Attempt(telegram_update(7, "edited")),
        True,
        "same-update-id",
    ),
    DedupCase(
        "telegram",
        Attempt(telegram_update(7)),
        Attempt(telegram_update(8)),
        False,
        "next-update-id",
    ),
    DedupCase(
        "github",
        Attempt(b'{"a":1}', "guid-1"),
        Attempt(b'{"a":2}', "guid-1"),
        True,
        "redelivery-same-guid",
    ),
    DedupCase(
        "github",
        Attempt(b'{"a":1}', "guid-1"),
        Attempt(b'{"a":1}', "guid-2"),
        False,
        "other-guid-same-body",
    ),
    DedupCase(
        "meta", Attempt(meta_event("message")), Attempt(meta_event("message")), True, "same-bytes"
    ),
    DedupCase(
        "meta", Attempt(meta_event("delivered")), Attempt(meta_event("read")), False, "other-bytes"
    ),
    DedupCase(
        "chatwoot",
        Attempt(b'{"a":1}', "d-1"),
        Attempt(b'{"a":2}', "d-1"),
        True,
        "same-delivery-header",
    ),
    DedupCase(
        "chatwoot",
        Attempt(b'{"a":1}', "d-1"),
        Attempt(b'{"a":1}', "d-2"),
        False,
        "other-delivery-header",
    ),
    DedupCase(
        "generic", Attempt(b'{"a":1}', "d-1"), Attempt(b'{"a":2}', "d-1"), True, "same-x-delivery"
    ),
    DedupCase("generic", Attempt(b'{"a":1}'), Attempt(b'{"a":1}'), True, "no-header-same-body"),
    DedupCase("generic", Attempt(b'{"a":1}'), Attempt(b'{"a":2}'), False, "no-header-other-body"),
]


@pytest.mark.parametrize("case", DEDUP_CASES, ids=str)
def test_provider_retry_dedups_by_the_provider_rule(harness: Harness, case: DedupCase) -> None:
    """A re-signed retry a minute later is a duplicate (same ack bytes) exactly when the
    provider's own identity for the event is unchanged."""
    p = PROVIDERS[case.plugin]
    harness.add(p)
    first = harness.send(p, case.first.body, msg_id=case.first.msg_id)
    harness.clock.advance(60)
    retry = harness.send(p, case.retry.body, msg_id=case.retry.msg_id)
    assert first.status_code == retry.status_code == p.ack_status
    assert len(harness.rows()) == (1 if case.duplicate else 2)
    assert (retry.content == first.content) is (case.duplicate or p.ack_body is not None)


@pytest.mark.parametrize("p", [PROVIDERS["stripe"], PROVIDERS["telegram"]], ids=str)
def test_garbage_json_on_a_json_pointer_route_is_400_and_stores_nothing(
    harness: Harness, p: Provider
) -> None:
    """A validly signed body that is not JSON cannot yield the event id: 400, nothing stored."""
    harness.add(p)
    reply = harness.send(p, b"{not json")
    assert reply.status_code == 400
    assert reason(reply) == "body_not_json"
    assert harness.rows() == []


# -- conversation extraction ----------------------------------------------------------------

CONVERSATIONS = [
    pytest.param("meta", meta_event("message"), {}, WA_ID, id="meta-message-sender"),
    pytest.param("meta", meta_event("delivered"), {}, WA_ID, id="meta-status-recipient"),
    pytest.param("twilio", twilio_form(), {}, "whatsapp:+16505551234", id="twilio-From"),
    pytest.param("telegram", telegram_update(), {}, "-1001234567890", id="telegram-chat-id"),
    pytest.param("chatwoot", PROVIDERS["chatwoot"].sample, {}, "7", id="chatwoot-conversation"),
    pytest.param(
        "generic",
        PROVIDERS["generic"].sample,
        {"x-conversation": "order-17"},
        "order-17",
        id="generic-header",
    ),
    pytest.param("generic", PROVIDERS["generic"].sample, {}, None, id="generic-none"),
    pytest.param("stripe", stripe_event(), {}, None, id="stripe-none"),
    pytest.param("github", PROVIDERS["github"].sample, {}, None, id="github-none"),
    pytest.param("supabase", PROVIDERS["supabase"].sample, {}, None, id="supabase-none"),
    pytest.param(
        "standard-webhooks",
        PROVIDERS["standard-webhooks"].sample,
        {},
        None,
        id="standard-webhooks-none",
    ),
]


@pytest.mark.parametrize("plugin, body, headers, expected", CONVERSATIONS)
def test_conversation_is_extracted_by_the_provider_rule(
    harness: Harness, plugin: str, body: bytes, headers: dict[str, str], expected: str | None
) -> None:
    """deliveries.conversation holds the provider's conversation key, or NULL where it has none."""
    p = PROVIDERS[plugin]
    harness.add(p)
    assert harness.send(p, body, headers=headers).status_code == p.ack_status
    [row] = harness.rows()
    assert row["conversation"] == expected


def test_meta_message_and_its_status_callbacks_share_a_lane(harness: Harness) -> None:
    """An inbound message (its sender) and our reply's statuses (its recipient) share a lane."""
    p = PROVIDERS["meta"]
    harness.add(p)
    for body in (
        meta_event("message"),
        meta_event("sent"),
        meta_event("delivered"),
        meta_event("read"),
    ):
        assert harness.send(p, body).status_code == 200
    assert {row["conversation"] for row in harness.rows()} == {WA_ID}
    assert len(harness.rows()) == 4


# -- Meta: the GET verification handshake, and signing the bytes as sent ---------------------


def challenge(harness: Harness, **query: str) -> Reply:
    reply: Reply = harness.client.get(PROVIDERS["meta"].path, params=query)
    return reply


def test_meta_challenge_with_the_right_token_echoes_as_text_plain(harness: Harness) -> None:
    """Meta's subscribe GET with the instance's verify token gets the challenge back verbatim."""
    harness.add(PROVIDERS["meta"], verify_token="my-verify-token")
    reply = challenge(
        harness,
        **{
            "hub.mode": "subscribe",
            "hub.verify_token": "my-verify-token",
            "hub.challenge": "1158201444",
        },
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text == "1158201444"
    assert harness.rows() == []


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "c-7781"},
        {"hub.mode": "subscribe", "hub.challenge": "c-7781"},
        {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "c-7781"},
        {
            "hub.mode": "unsubscribe",
            "hub.verify_token": "my-verify-token",
            "hub.challenge": "c-7781",
        },
    ],
    ids=["wrong-token", "missing-token", "empty-token", "not-subscribe"],
)
def test_meta_challenge_without_the_right_token_is_403(
    harness: Harness, query: dict[str, str]
) -> None:
    """A wrong, missing or empty verify token (or another mode) is refused with 403."""
    harness.add(PROVIDERS["meta"], verify_token="my-verify-token")
    reply = challenge(harness, **query)
    assert reply.status_code == 403
    assert reason(reply) == "challenge_failed"
    assert "c-7781" not in reply.text  # the challenge is never echoed


def test_meta_challenge_on_an_instance_without_verify_token_is_403(harness: Harness) -> None:
    """With the verify token cleared, no token (not even an empty one) passes."""
    harness.add(PROVIDERS["meta"], verify_token="my-verify-token")
    cleared = harness.client.patch(
        "/admin/instances/meta/main", headers=ADMIN, json={"verify_token": None}
    )
    assert cleared.status_code == 200
    for token in ("", "my-verify-token", "None", "null"):
        reply = challenge(
            harness, **{"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "42"}
        )
        assert reply.status_code == 403, token


UNICODE_ESCAPED = (
    b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":'
    b'{"messages":[{"from":"16505551234","text":{"body":"caf\\u00e9 \\ud83d\\ude00'
    b' \\/ok"}}]}}]}]}'
)


def test_meta_signature_over_unicode_escapes_passes_on_the_exact_bytes(harness: Harness) -> None:
    """Meta signs "\\u00e9" as the six bytes it sent; those exact bytes verify and are stored."""
    p = PROVIDERS["meta"]
    harness.add(p)
    assert harness.send(p, UNICODE_ESCAPED).status_code == 200
    [row] = harness.rows()
    assert bytes(row["body"]) == UNICODE_ESCAPED
    assert row["conversation"] == WA_ID


def test_meta_signature_fails_on_a_reserialized_body(harness: Harness) -> None:
    """The same document re-serialized (é as UTF-8, as a JSON round trip gives) fails the HMAC."""
    p = PROVIDERS["meta"]
    harness.add(p)
    reserialized = json.dumps(
        json.loads(UNICODE_ESCAPED), ensure_ascii=False, separators=(",", ":")
    ).encode()
    assert reserialized != UNICODE_ESCAPED
    reply = harness.send(p, reserialized, signed=UNICODE_ESCAPED)
    assert reply.status_code == 401


# -- Twilio: the URL it signed, behind a proxy, and JSON bodies ------------------------------

PUBLIC = "https://hooks.example.com"


def test_twilio_behind_a_proxy_verifies_against_the_public_url(open_box: OpenBox) -> None:
    """Signed for INGRESS_BOX_PUBLIC_URL's URL, arriving at the bound address: it verifies."""
    harness = open_box({"INGRESS_BOX_PUBLIC_URL": PUBLIC})
    p = PROVIDERS["twilio"]
    created = harness.add(p)
    assert created["ingress_url"] == f"{PUBLIC}/ingress/twilio/main/messages"
    reply = harness.send(p, signed_url=created["ingress_url"])
    assert (reply.status_code, reply.content) == (200, TWIML)


def test_twilio_behind_a_proxy_fails_without_the_public_url(harness: Harness) -> None:
    """Without the public URL the box rebuilds its own URL, which is not what Twilio signed."""
    p = PROVIDERS["twilio"]
    harness.add(p)
    reply = harness.send(p, signed_url=f"{PUBLIC}/ingress/twilio/main/messages")
    assert reply.status_code == 401
    assert reason(reply) in ("bad_url", "bad_signature")
    assert harness.rows() == []


def test_twilio_public_url_with_a_path_prefix_the_proxy_strips(open_box: OpenBox) -> None:
    """A proxy serving the box under /box (and stripping it) works with that prefix configured."""
    harness = open_box(public_url=f"{PUBLIC}/box/")
    p = PROVIDERS["twilio"]
    created = harness.add(p)
    assert created["ingress_url"] == f"{PUBLIC}/box/ingress/twilio/main/messages"
    assert harness.send(p, signed_url=created["ingress_url"]).status_code == 200


def test_twilio_json_body_verifies_through_body_sha256(open_box: OpenBox) -> None:
    """A JSON body is covered by the bodySHA256 query parameter of the signed URL."""
    harness = open_box(public_url=PUBLIC)
    p = PROVIDERS["twilio"]
    harness.add(p)
    body = b'{"MessageSid":"SM9","From":"whatsapp:+16505551234","Body":"hello"}'
    query = f"bodySHA256={hashlib.sha256(body).hexdigest()}"
    url = f"{PUBLIC}{p.path}?{query}"
    # twilio's own validator agrees with the signer before the box is asked.
    signature = sign_twilio(p.secret, body, at=0, url=url)["x-twilio-signature"]
    assert RequestValidator(p.secret).validate(url, body.decode(), signature)
    reply = harness.send(
        p, body, query=query, signed_url=url, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 200
    assert bytes(harness.rows()[0]["body"]) == body


def test_twilio_json_body_changed_after_signing_fails_its_hash(open_box: OpenBox) -> None:
    """The URL signature holds but the body no longer matches bodySHA256: 401 bad_body_hash."""
    harness = open_box(public_url=PUBLIC)
    p = PROVIDERS["twilio"]
    harness.add(p)
    body = b'{"MessageSid":"SM9","Body":"hello"}'
    query = f"bodySHA256={hashlib.sha256(body).hexdigest()}"
    reply = harness.send(
        p,
        body.replace(b"hello", b"jello"),
        signed=body,
        query=query,
        signed_url=f"{PUBLIC}{p.path}?{query}",
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 401
    assert reason(reply) == "bad_body_hash"


# -- the providers' own libraries and published examples, end to end -----------------------


def test_stripe_library_accepts_the_test_signer() -> None:
    """stripe.WebhookSignature.verify_header (the oracle) accepts what sign_stripe produces."""
    p = PROVIDERS["stripe"]
    now = int(time.time())
    header = sign_stripe(p.secret, p.sample, at=now)["stripe-signature"]
    assert stripe.WebhookSignature.verify_header(p.sample.decode(), header, p.secret, 300)


def test_stripe_library_generated_header_is_accepted(harness: Harness) -> None:
    """A header from stripe's own generate_signature_header verifies over HTTP."""
    p = PROVIDERS["stripe"]
    harness.add(p)
    header = stripe.WebhookSignature.generate_signature_header(
        p.sample.decode(), p.secret, int(harness.clock())
    )
    reply = harness.client.post(
        p.path, content=p.sample, headers={"stripe-signature": header, "content-type": JSON}
    )
    assert reply.status_code == 202


def test_stripe_secret_roll_with_two_v1_signatures_is_accepted(harness: Harness) -> None:
    """While a Stripe secret rolls, the header carries one v1 per secret; any match passes."""
    p = PROVIDERS["stripe"]
    harness.add(p)
    at = int(harness.clock())
    other = hmac_hex("whsec_expiring", f"{at}.".encode() + p.sample)
    good = hmac_hex(p.secret, f"{at}.".encode() + p.sample)
    reply = harness.client.post(
        p.path,
        content=p.sample,
        headers={"stripe-signature": f"t={at},v1={other},v1={good}", "content-type": JSON},
    )
    assert reply.status_code == 202


def test_github_documented_example_verifies_over_http(harness: Harness) -> None:
    """GitHub's documented secret, payload and signature are accepted as they stand."""
    p = PROVIDERS["github"]
    harness.add(p)  # its secret is GitHub's example: "It's a Secret to Everybody"
    signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    guid = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    reply = harness.client.post(
        p.path,
        content=b"Hello, World!",
        headers={"x-hub-signature-256": signature, "x-github-delivery": guid},
    )
    assert reply.status_code == 202
    assert harness.rows()[0]["provider_delivery_id"] == guid


def test_svix_signed_request_with_svix_headers_is_accepted_and_dedups_on_svix_id(
    harness: Harness,
) -> None:
    """Svix's library signs with svix-* header names; the standard-webhooks route takes them."""
    p = PROVIDERS["standard-webhooks"]
    harness.add(p)
    at = int(harness.clock())
    for body in (b'{"n":1}', b'{"n":2}'):  # the same svix-id: the second is the same message
        signature = svix.webhooks.Webhook(p.secret).sign(
            "msg_svix_1", datetime.fromtimestamp(at, tz=UTC), body.decode()
        )
        reply = harness.client.post(
            p.path,
            content=body,
            headers={
                "svix-id": "msg_svix_1",
                "svix-timestamp": str(at),
                "svix-signature": signature,
                "content-type": JSON,
            },
        )
        assert reply.status_code == 202
    [row] = harness.rows()
    assert row["provider_delivery_id"] == "msg_svix_1"


def test_supabase_secret_as_the_dashboard_shows_it_works(harness: Harness) -> None:
    """Supabase shows the hook secret as "v1,whsec_<base64>"; pasted whole, it verifies."""
    p = PROVIDERS["supabase"]
    assert p.secret.startswith("v1,whsec_")
    harness.add(p)
    assert harness.send(p).status_code == 202
