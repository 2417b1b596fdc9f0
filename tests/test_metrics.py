"""Metrics move as traffic flows; logs carry ids and outcomes, never secrets or bodies."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_target import FakeTarget, Reply
from live import SECRET, LiveBox, add_instance, running_box
from signers import sign_generic
from starlette.testclient import TestClient
from waiting import eventually

from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, Settings, load_settings

pytestmark = pytest.mark.both_stores

TOKEN = "metrics-admin-token"
URL = "/ingress/generic/main/events"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, label_text = metric.partition("{")
        found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if base == name and found == want:
            return float(value)
    return 0.0


@pytest.fixture
def settings(store: Path | DatabaseUrl) -> Settings:
    return load_settings(
        {},
        db_path=store,
        admin_token=TOKEN,
        retry_max_attempts=1,
        retry_base_seconds=0.01,
    )


@pytest.fixture
def live(settings: Settings, target: FakeTarget) -> Iterator[LiveBox]:
    with running_box(settings) as box:
        add_instance(box.box, target_url=target.url)
        yield box


def signed(body: bytes, secret: str = SECRET, **extra: str) -> dict[str, str]:
    return {"content-type": "application/json", **sign_generic(secret, body), **extra}


def scrape(live: LiveBox) -> str:
    response = httpx.get(live.url + "/metrics", headers=AUTH)
    assert response.status_code == 200
    return response.text


def test_metrics_need_the_admin_token_unless_public(store: Path | DatabaseUrl) -> None:
    """/metrics answers 401 without the token, and opens when configured public."""
    s = load_settings({}, db_path=store, admin_token=TOKEN)
    with TestClient(create_app(s, run_worker=False)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=AUTH).status_code == 200
    s = load_settings({}, db_path=store, admin_token=TOKEN, metrics_public=True)
    with TestClient(create_app(s, run_worker=False)) as c:
        assert c.get("/metrics").status_code == 200


def test_ingress_outcomes_are_counted(live: LiveBox, target: FakeTarget) -> None:
    """Accepted, duplicate, rejected and unknown requests each move their counter."""
    body = b'{"a":1}'
    for _ in range(2):
        httpx.post(live.url + URL, content=body, headers=signed(body))
    httpx.post(live.url + URL, content=body, headers={"x-signature": "sha256=00"})
    httpx.post(live.url + "/ingress/generic/nobody/events", content=body)
    text = scrape(live)
    name = "ingress_box_ingress_requests_total"
    assert sample(text, name, plugin="generic", instance="main", outcome="accepted") == 1
    assert sample(text, name, plugin="generic", instance="main", outcome="duplicate") == 1
    assert sample(text, name, plugin="generic", instance="main", outcome="bad_signature") == 1
    assert sample(text, name, plugin="", instance="", outcome="not_found") == 1
    assert sample(text, "ingress_box_commit_batch_size_count") >= 1


def test_delivery_outcomes_and_dead_letters_are_counted(live: LiveBox, target: FakeTarget) -> None:
    """Delivered and dead attempts are counted and the open dead letters gauge rises."""
    target.reply(200, then=Reply(400, body=b"no"))
    for i in range(2):
        body = f'{{"n":{i}}}'.encode()
        httpx.post(live.url + URL, content=body, headers=signed(body))
    target.wait_for(2)
    name = "ingress_box_delivery_attempts_total"

    def counted() -> str | None:
        # Both attempts counted (the worker counts before it records them) and both outcomes
        # committed: one open dead letter, nothing left in the outbox.
        text = scrape(live)
        attempts = sum(
            sample(text, name, plugin="generic", instance="main", outcome=outcome)
            for outcome in ("delivered", "retry", "dead")
        )
        settled = (
            sample(text, "ingress_box_dead_letters_open") == 1
            and sample(text, "ingress_box_outbox_depth") == 0
        )
        return text if attempts == 2 and settled else None

    text = eventually(counted, 10, "two counted attempts and one open dead letter")
    assert sample(text, name, plugin="generic", instance="main", outcome="delivered") == 1
    assert sample(text, name, plugin="generic", instance="main", outcome="dead") == 1
    assert sample(text, "ingress_box_dead_letters_open") == 1
    assert sample(text, "ingress_box_outbox_depth") == 0
    assert sample(text, "ingress_box_delivery_latency_seconds_count", plugin="generic") == 1
    assert sample(text, "ingress_box_database_bytes", file="db") > 0


def test_no_delivery_or_conversation_id_becomes_a_label(live: LiveBox, target: FakeTarget) -> None:
    """Label values stay bounded: ids never appear in the exposition."""
    body = b'{"n":1}'
    httpx.post(
        live.url + URL,
        content=body,
        headers=signed(body, **{"x-delivery": "unique-77", "x-conversation": "c-99"}),
    )
    target.wait_for(1)
    text = scrape(live)
    assert "unique-77" not in text and "c-99" not in text and "msg_" not in text


def test_logs_carry_outcomes_but_no_secret_or_body(
    live: LiveBox, target: FakeTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per request and per attempt; neither the secret nor the body is logged."""
    caplog.set_level(logging.INFO)
    body = b'{"private":"top-secret-body-text"}'
    httpx.post(
        live.url + URL,
        content=body,
        headers=signed(body, authorization="Bearer hunter2"),
    )
    target.wait_for(1)
    eventually(
        lambda: any(r.name == "ingress_box.delivery" for r in caplog.records),
        5,
        "the attempt's log line",
    )
    lines = [r for r in caplog.records if r.name in ("ingress_box.access", "ingress_box.delivery")]
    assert {r.name for r in lines} == {"ingress_box.access", "ingress_box.delivery"}
    access = next(r for r in lines if r.name == "ingress_box.access")
    fields = access.__dict__["fields"]  # set through logging's ``extra``
    assert fields["outcome"] == "accepted"
    assert re.match(r"msg_[0-9a-f]{32}", fields["delivery_id"])
    everything = caplog.text + " ".join(str(getattr(r, "fields", "")) for r in caplog.records)
    for secret in ("top-secret-body-text", "hunter2", "s3cret-value"):
        assert secret not in everything


def test_a_whole_flow_logs_no_secret_and_no_body(
    store: Path | DatabaseUrl, target: FakeTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """Create, receive, fail, dead-letter, redrive, rotate: nothing secret reaches any log."""
    caplog.set_level(logging.DEBUG)
    settings = load_settings(
        {},
        db_path=store,
        admin_token=TOKEN,
        retry_max_attempts=1,
        retry_base_seconds=0.01,
    )
    target.reply(Reply(500, body=b"no"), then=Reply(200, body=b"ok"))
    secret, body = "flow-secret-0123456789", b'{"note":"private-body-marker-42"}'
    with running_box(settings) as live:
        created = httpx.post(
            live.url + "/admin/instances",
            headers=AUTH,
            json={
                "plugin": "generic",
                "instance": "main",
                "target_url": target.url,
                "secret": secret,
            },
        ).json()
        httpx.post(
            live.url + URL,
            content=body,
            headers=signed(body, secret, authorization="Bearer provider-credential-7"),
        )
        target.wait_for(1)
        eventually(
            lambda: httpx.get(live.url + "/admin/dlq", headers=AUTH).json()["items"],
            10,
            "the dead letter",
        )
        httpx.post(live.url + "/admin/dlq/redrive", headers=AUTH, json={})
        target.wait_for(2)
        rotated = httpx.post(
            live.url + "/admin/instances/generic/main/rotate-secret", headers=AUTH, json={}
        ).json()
    logged = caplog.text + " ".join(str(getattr(r, "fields", "")) for r in caplog.records)
    for needle in (
        secret,
        rotated["secret"],
        created["outbound_secret"],
        created["verify_token"],
        TOKEN,
        "provider-credential-7",
        "private-body-marker-42",
    ):
        assert needle not in logged, needle
