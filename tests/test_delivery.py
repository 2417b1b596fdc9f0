"""Delivery: forward against the fake target (a real local HTTP server), Standard Webhooks
signing, retry policy."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import random
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_target import FakeTarget, Reply
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from ingress_box.config import Settings
from ingress_box.delivery import Event, HandlerContext, Target
from ingress_box.errors import PermanentFailure, RetryLater, Waiting
from ingress_box.forward import MAX_RESPONSE_BYTES, forward
from ingress_box.handlers import register_handler, resolve_handler
from ingress_box.retry import Decision, RetryPolicy, backoff, decide
from ingress_box.signing import generate_outbound_secret, sign

# The example secret of the Standard Webhooks specification.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def client(target: FakeTarget) -> Iterator[httpx.Client]:
    # Depends on target so it closes first, letting keep-alive handler threads end.
    with httpx.Client() as c:
        yield c


def make_event(**changes: Any) -> Event:
    base = Event(
        id="msg_2b1f0c9e",
        plugin="chatwoot",
        instance="acme",
        route="events",
        provider_delivery_id="dlv-1",
        conversation="42",
        method="POST",
        subpath="",
        content_type="application/json",
        headers={"content-type": "application/json"},
        body=b'{"event": "message_created"}',
        attempt=1,
        received_at=1_700_000_000.0,
    )
    return dataclasses.replace(base, **changes)


def make_ctx(client: httpx.Client, url: str | None, **changes: Any) -> HandlerContext:
    target = Target(
        url=url, outbound_secret=changes.pop("secret", SECRET), config=changes.pop("config", {})
    )
    return HandlerContext(
        target=target,
        client=client,
        timeout=changes.pop("timeout", 5.0),
        now=changes.pop("now", time.time),
        **changes,
    )


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"  # nothing listens there once the socket is closed


# --- forward: what the target receives ----------------------------------------------------------


def test_forward_signature_verifies_with_standardwebhooks(
    target: FakeTarget, client: httpx.Client
) -> None:
    """A Standard Webhooks library verifies what forward sends with the instance's secret."""
    forward(make_event(), make_ctx(client, target.url))
    got = target.received[0]
    Webhook(SECRET).verify(got.body, got.headers, json_parse=False)


def test_forward_sends_non_utf8_bytes_unchanged_and_signs_them(
    target: FakeTarget, client: httpx.Client
) -> None:
    """Binary bodies arrive byte for byte and the signature covers those exact bytes."""
    body = b'\xff\xfe\x00raw\x80\r\n{"a": 1}'
    forward(make_event(body=body, content_type=None), make_ctx(client, target.url))
    got = target.received[0]
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert (got.body, got.headers["webhook-signature"]) == (body, f"v1,{expected}")


def test_forward_sends_the_contract_headers(target: FakeTarget, client: httpx.Client) -> None:
    """Every header of the contract is set from the event and the injected clock."""
    forward(make_event(attempt=3), make_ctx(client, target.url, now=lambda: 1_700_000_123.9))
    got = target.received[0].headers
    assert {
        k: got[k]
        for k in (
            "content-type",
            "webhook-id",
            "webhook-timestamp",
            "ingress-box-plugin",
            "ingress-box-instance",
            "ingress-box-route",
            "ingress-box-delivery-id",
            "ingress-box-conversation",
            "ingress-box-attempt",
        )
    } == {
        "content-type": "application/json",
        "webhook-id": "msg_2b1f0c9e",
        "webhook-timestamp": "1700000123",
        "ingress-box-plugin": "chatwoot",
        "ingress-box-instance": "acme",
        "ingress-box-route": "events",
        "ingress-box-delivery-id": "dlv-1",
        "ingress-box-conversation": "42",
        "ingress-box-attempt": "3",
    }
    assert got["user-agent"].startswith("ingress-box/")


def test_forward_omits_conversation_header_when_unknown(
    target: FakeTarget, client: httpx.Client
) -> None:
    """No ingress-box-conversation header is sent for an event without a conversation."""
    forward(make_event(conversation=None), make_ctx(client, target.url))
    assert "ingress-box-conversation" not in target.received[0].headers


def test_forward_defaults_content_type_to_octet_stream(
    target: FakeTarget, client: httpx.Client
) -> None:
    """An inbound request without a content type is forwarded as application/octet-stream."""
    forward(make_event(content_type=None), make_ctx(client, target.url))
    assert target.received[0].headers["content-type"] == "application/octet-stream"


def test_forward_adds_extra_and_configured_headers_without_overriding_protocol(
    target: FakeTarget, client: httpx.Client
) -> None:
    """Config and enrichment headers are sent, but cannot replace the signed protocol headers."""
    config = {"headers": {"X-Api-Key": "k1", "Webhook-Id": "forged"}}
    ctx = make_ctx(client, target.url, config=config, extra_headers={"ingress-box-session": "main"})
    forward(make_event(), ctx)
    got = target.received[0].headers
    assert (got["x-api-key"], got["ingress-box-session"], got["webhook-id"]) == (
        "k1",
        "main",
        "msg_2b1f0c9e",
    )


def test_forward_sends_untrusted_ids_as_utf8_without_header_injection(
    target: FakeTarget, client: httpx.Client
) -> None:
    """Non-ASCII ids arrive as UTF-8 and line breaks in them cannot start a new header."""
    forward(make_event(conversation="José\r\nx-evil: 1"), make_ctx(client, target.url))
    got = target.received[0].headers
    assert (got["ingress-box-conversation"], "x-evil" in got) == ("José  x-evil: 1", False)


def test_forward_rejects_malformed_configured_headers(client: httpx.Client) -> None:
    """A config "headers" that is not a map of strings is a permanent failure."""
    with pytest.raises(PermanentFailure):
        forward(make_event(), make_ctx(client, "http://127.0.0.1:9/", config={"headers": [1]}))


def test_forward_without_target_url_is_permanent(client: httpx.Client) -> None:
    """An instance without target_url dead-letters at once."""
    with pytest.raises(PermanentFailure, match="no target_url configured"):
        forward(make_event(), make_ctx(client, None))


def test_forward_with_invalid_secret_is_permanent(client: httpx.Client) -> None:
    """A secret that is not whsec_<base64> cannot sign, so retrying would not help."""
    with pytest.raises(PermanentFailure):
        forward(make_event(), make_ctx(client, "http://127.0.0.1:9/", secret="whsec_!!"))


# --- forward: classifying the answer ------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204])
def test_forward_2xx_is_delivered(target: FakeTarget, client: httpx.Client, status: int) -> None:
    """A 2xx answer means delivered: forward returns normally."""
    target.reply(Reply(status))
    forward(make_event(), make_ctx(client, target.url))


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_forward_retryable_status_raises_retry_later_with_status(
    target: FakeTarget, client: httpx.Client, status: int
) -> None:
    """408, 429 and 5xx are transient and carry their status code."""
    target.reply(Reply(status, body=b"busy"))
    with pytest.raises(RetryLater) as info:
        forward(make_event(), make_ctx(client, target.url))
    assert (info.value.status_code, info.value.error, info.value.delay) == (
        status,
        f"HTTP {status}: busy",
        None,
    )


@pytest.mark.parametrize("status", [400, 404])
def test_forward_other_4xx_is_permanent(
    target: FakeTarget, client: httpx.Client, status: int
) -> None:
    """A 4xx other than 408 and 429 dead-letters with its status code."""
    target.reply(Reply(status, body=b"nope"))
    with pytest.raises(PermanentFailure) as info:
        forward(make_event(), make_ctx(client, target.url))
    assert (info.value.status_code, info.value.error) == (status, f"HTTP {status}: nope")


def test_forward_does_not_follow_redirects(target: FakeTarget, client: httpx.Client) -> None:
    """A 301 is a permanent failure and the Location is never requested."""
    target.reply(Reply(301, headers={"location": "/elsewhere"}))
    with pytest.raises(PermanentFailure) as info:
        forward(make_event(), make_ctx(client, target.url))
    assert (info.value.status_code, [r.path for r in target.received]) == (301, ["/hook"])


def test_forward_honours_retry_after_seconds(target: FakeTarget, client: httpx.Client) -> None:
    """A Retry-After in seconds becomes the RetryLater delay."""
    target.reply(Reply(429, headers={"retry-after": "120"}))
    with pytest.raises(RetryLater) as info:
        forward(make_event(), make_ctx(client, target.url))
    assert info.value.delay == 120.0


def test_forward_honours_retry_after_http_date(target: FakeTarget, client: httpx.Client) -> None:
    """A Retry-After HTTP-date becomes the seconds from the injected clock to that date."""
    now = 1_700_000_000.0
    when = format_datetime(datetime.fromtimestamp(now + 90, UTC), usegmt=True)
    target.reply(Reply(503, headers={"retry-after": when}))
    with pytest.raises(RetryLater) as info:
        forward(make_event(), make_ctx(client, target.url, now=lambda: now))
    assert info.value.delay == 90.0


def test_forward_ignores_garbage_retry_after(target: FakeTarget, client: httpx.Client) -> None:
    """An unreadable Retry-After leaves the delay to the backoff policy."""
    target.reply(Reply(503, headers={"retry-after": "soon-ish"}))
    with pytest.raises(RetryLater) as info:
        forward(make_event(), make_ctx(client, target.url))
    assert info.value.delay is None


def test_forward_error_excerpt_is_200_chars_decoded_with_replacement(
    target: FakeTarget, client: httpx.Client
) -> None:
    """The error keeps at most 200 characters of the answer, undecodable bytes replaced."""
    target.reply(Reply(500, body=b"\xff" + b"x" * 1000))
    with pytest.raises(RetryLater) as info:
        forward(make_event(), make_ctx(client, target.url))
    assert info.value.error == "HTTP 500: \ufffd" + "x" * 199


def test_forward_reads_at_most_64_kib_of_the_answer(
    target: FakeTarget, client: httpx.Client
) -> None:
    """Sent 128 KiB of a 10 MiB answer, forward stops at the cap instead of waiting for more."""
    target.reply(Reply(500, body=b"e" * (2 * MAX_RESPONSE_BYTES), declared_length=10 << 20))
    started = time.monotonic()
    with pytest.raises(RetryLater) as info:
        forward(make_event(), make_ctx(client, target.url, timeout=3.0))
    assert info.value.error.startswith("HTTP 500: eee")
    assert time.monotonic() - started < 2.0  # reading past the cap would wait for the timeout


def test_forward_2xx_with_a_stalled_body_is_delivered(
    target: FakeTarget, client: httpx.Client
) -> None:
    """Once a 2xx status arrived, a body that never completes does not turn it into a retry."""
    target.reply(Reply(200, body=b"ok", declared_length=1000))
    forward(make_event(), make_ctx(client, target.url, timeout=0.3))


def test_forward_timeout_is_retried(target: FakeTarget, client: httpx.Client) -> None:
    """A target slower than the attempt's timeout gives RetryLater("timeout") in about that time."""
    target.reply(Reply(200, delay=5.0))
    started = time.monotonic()
    with pytest.raises(RetryLater) as info:
        forward(make_event(), make_ctx(client, target.url, timeout=0.3))
    assert (info.value.error, time.monotonic() - started < 2.0) == ("timeout", True)


def test_forward_connection_refused_is_retried(client: httpx.Client) -> None:
    """A closed port is a transient connection error."""
    with pytest.raises(RetryLater) as info:
        forward(make_event(), make_ctx(client, refused_url()))
    assert info.value.error.startswith("connection error: ")


def test_forward_to_a_non_http_url_is_permanent(client: httpx.Client) -> None:
    """A target_url httpx cannot speak to is a permanent failure, not an endless retry."""
    with pytest.raises(PermanentFailure, match="invalid target_url"):
        forward(make_event(), make_ctx(client, "ftp://127.0.0.1/hook"))


# --- signing ------------------------------------------------------------------------------------


def test_sign_matches_the_specification_example() -> None:
    """sign reproduces the example signature of the Standard Webhooks specification."""
    body = b'{"test": 2432232314}'
    assert sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, SECRET) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@given(msg_id=st.text(min_size=1), timestamp=st.integers(0, 2**33), body=st.text())
def test_sign_agrees_with_standardwebhooks(msg_id: str, timestamp: int, body: str) -> None:
    """For any text body, sign equals the reference library's signature."""
    reference = Webhook(SECRET).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)
    assert sign(msg_id, timestamp, body.encode(), SECRET) == reference


def test_sign_refuses_an_empty_key() -> None:
    """A whsec_ secret with an empty key cannot sign."""
    with pytest.raises(ValueError):
        sign("msg_1", 1, b"", "whsec_")


def test_generated_secret_is_24_random_bytes_usable_by_standardwebhooks() -> None:
    """generate_outbound_secret gives whsec_ + base64 of 24 fresh bytes that libraries accept."""
    secret = generate_outbound_secret()
    Webhook(secret)
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert secret != generate_outbound_secret()


# --- handler registry ---------------------------------------------------------------------------


def test_resolve_forward_by_name() -> None:
    """The built-in name "forward" resolves to forward."""
    assert resolve_handler("forward") is forward


def test_resolve_registered_handler() -> None:
    """A registered handler resolves by its name."""

    def noop(event: Event, ctx: HandlerContext) -> None:
        pass

    register_handler("test-noop", noop)
    assert resolve_handler("test-noop") is noop


def test_resolve_imports_module_function_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "package.module:function" name imports the module on first resolve."""
    package = tmp_path / "ib_user_handlers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "hooks.py").write_text("def handle(event, ctx):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ib_user_handlers", raising=False)
    monkeypatch.delitem(sys.modules, "ib_user_handlers.hooks", raising=False)
    handler = resolve_handler("ib_user_handlers.hooks:handle")
    assert handler.__module__ == "ib_user_handlers.hooks"
    del sys.modules["ib_user_handlers.hooks"], sys.modules["ib_user_handlers"]


@pytest.mark.parametrize("name", ["nope", "no_such_module_xyz:handle", "os.path:no_such_fn"])
def test_resolve_unknown_handler_raises_lookup_error(name: str) -> None:
    """Unknown names, missing modules and missing functions all raise LookupError."""
    with pytest.raises(LookupError):
        resolve_handler(name)


# --- retry policy -------------------------------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 50),
    base_seconds=st.floats(0.001, 1e4),
    max_seconds=st.floats(0.001, 1e6),
)


@given(policy=policies, attempt=st.integers(1, 10_000), seed=st.integers())
def test_backoff_stays_within_full_jitter_bounds(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    """0 <= backoff <= min(max_seconds, base_seconds * 2 ** (attempt - 1)) for any attempt."""
    ceiling = (
        policy.max_seconds
        if attempt > 1000
        else min(policy.max_seconds, policy.base_seconds * 2 ** (attempt - 1))
    )
    assert 0 <= backoff(policy, attempt, random.Random(seed)) <= ceiling


@given(
    policy=policies, attempt=st.integers(1, 49), retry_after=st.floats(0, 1e8), seed=st.integers()
)
def test_retry_after_is_a_floor_capped_by_max_seconds(
    policy: RetryPolicy, attempt: int, retry_after: float, seed: int
) -> None:
    """A retry's delay is at least min(Retry-After, max_seconds) and never above max_seconds."""
    policy = dataclasses.replace(policy, max_attempts=50)
    decision = decide(policy, attempt, RetryLater("HTTP 429", retry_after), random.Random(seed))
    assert min(retry_after, policy.max_seconds) <= decision.delay <= policy.max_seconds


def test_decide_success_is_delivered() -> None:
    """No exception means delivered, with no delay and no error."""
    assert decide(RetryPolicy(), 1, None, random.Random(0)) == Decision(
        "delivered", 0.0, None, None
    )


def test_decide_retries_the_attempt_before_the_budget_edge() -> None:
    """Attempt max_attempts - 1 failing transiently is retried, keeping the status code."""
    decision = decide(
        RetryPolicy(max_attempts=3), 2, RetryLater("HTTP 503", status_code=503), random.Random(0)
    )
    assert (decision.outcome, decision.error, decision.status_code) == ("retry", "HTTP 503", 503)


def test_decide_dead_letters_at_the_budget_edge() -> None:
    """Attempt max_attempts failing transiently is dead-lettered with its last error."""
    decision = decide(RetryPolicy(max_attempts=3), 3, RetryLater("timeout"), random.Random(0))
    assert decision == Decision("dead", 0.0, "timeout", None)


def test_decide_retries_a_wait_past_the_budget_from_its_floor() -> None:
    """A Waiting (another delivery goes first) is no failure: retried at the budget's edge and
    beyond it, no sooner than when what it waits for is next tried."""
    for attempt in (3, 4, 100):
        decision = decide(
            RetryPolicy(max_attempts=3, base_seconds=0.01, max_seconds=60),
            attempt,
            Waiting("earlier messages of this chat are still on their way", 7.5),
            random.Random(0),
        )
        assert decision.outcome == "retry"
        assert 7.5 <= decision.delay <= 60


def test_decide_permanent_failure_is_dead_at_once() -> None:
    """A PermanentFailure on the first attempt dead-letters, keeping the status code."""
    decision = decide(
        RetryPolicy(), 1, PermanentFailure("HTTP 404", status_code=404), random.Random(0)
    )
    assert (decision.outcome, decision.error, decision.status_code) == ("dead", "HTTP 404", 404)


def test_decide_treats_other_exceptions_as_retry_later() -> None:
    """An unexpected exception is retried with its type and message as the error."""
    decision = decide(RetryPolicy(), 1, ValueError("boom"), random.Random(0))
    assert (decision.outcome, decision.error) == ("retry", "ValueError: boom")


def test_policy_from_settings() -> None:
    """RetryPolicy.from_settings copies the three retry settings."""
    settings = Settings(retry_max_attempts=3, retry_base_seconds=0.5, retry_max_seconds=60.0)
    assert RetryPolicy.from_settings(settings) == RetryPolicy(3, 0.5, 60.0)
