"""Alerts: instance.failing and instance.recovered, signed per Standard Webhooks, posted to a
real local receiver, one per state change, across restarts on the same store."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import T0, MakeDeadLetters, MakeDeliveries, box_of
from fake_target import FakeTarget, Received, running_target
from live import SECRET, insert_instance
from signers import sign_generic
from standardwebhooks.webhooks import Webhook
from starlette.testclient import TestClient
from waiting import eventually

from ingress_box.alerts import Alerter
from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, Settings, load_settings
from ingress_box.errors import ConfigError
from ingress_box.store import Database, open_database
from ingress_box.store import health as store_health
from ingress_box.store.outbox import Outcome, claim, record_outcome
from ingress_box.worker import Worker

TOKEN = "t" * 16
AUTH = {"authorization": f"Bearer {TOKEN}"}
ALERT_SECRET = "whsec_" + "c2VjcmV0LWZvci1hbGVydHMtb25seQ=="

pytestmark = pytest.mark.both_stores


@pytest.fixture
def receiver() -> Iterator[FakeTarget]:
    """Where the alerts go: a second fake target."""
    with running_target() as r:
        yield r


def box_settings(
    store: Path | DatabaseUrl, receiver: FakeTarget | None, **changes: Any
) -> Settings:
    values: dict[str, Any] = {
        "db_path": store,
        "admin_token": TOKEN,
        "retry_max_attempts": 1000,  # failures pile up; no dead letter unless a test says
        "retry_base_seconds": 0.02,
        "retry_max_seconds": 0.05,
        "delivery_timeout_seconds": 2,
        "alert_after_failures": 2,
    }
    if receiver is not None:
        values.update(alert_url=receiver.url, alert_secret=ALERT_SECRET)
    return load_settings({}, **{**values, **changes})


def send(client: TestClient, n: int) -> None:
    body = json.dumps({"n": n}).encode()
    headers = {"content-type": "application/json", **sign_generic(SECRET, body, msg_id=f"e{n}")}
    answer = client.post("/ingress/generic/main/events", content=body, headers=headers)
    assert answer.status_code == 202, answer.text


def health_of(client: TestClient) -> dict[str, Any]:
    found: dict[str, Any] = client.get("/admin/instances/generic/main", headers=AUTH).json()[
        "health"
    ]
    return found


def wait_health(client: TestClient, what: str, check: Any) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = health_of(client)
        return found if check(found) else None

    return eventually(reached, 15, what)


def alerts(receiver: FakeTarget, count: int) -> list[dict[str, Any]]:
    """The first ``count`` alerts, each verified with the standardwebhooks library."""
    verified = []
    for got in receiver.wait_for(count)[:count]:
        verified.append(Webhook(ALERT_SECRET).verify(got.body, got.headers))
    return verified


def alerter_of(client: TestClient) -> Alerter:
    """The alerter of the app's worker."""
    worker = box_of(client).worker
    assert isinstance(worker, Worker) and worker.alerter is not None
    return worker.alerter


@pytest.fixture
def instance(store: Path | DatabaseUrl, target: FakeTarget) -> None:
    db = open_database(store).open()
    try:
        insert_instance(db, target_url=target.url)
    finally:
        db.close()


@pytest.mark.usefixtures("instance")
def test_one_failing_then_one_recovered_alert(
    store: Path | DatabaseUrl, target: FakeTarget, receiver: FakeTarget
) -> None:
    """Two failures in a row alert failing once (not again at the third or later); the first
    success alerts recovered."""
    target.reply(then=500)
    with TestClient(create_app(box_settings(store, receiver))) as client:
        send(client, 1)
        (failing,) = alerts(receiver, 1)
        target.reply(then=200)
        failing, recovered = alerts(receiver, 2)
        wait_health(client, "the delivery", lambda h: h["last_success_at"] is not None)
        assert alerter_of(client).check() == []
    assert len(receiver.received) == 2
    assert failing["type"] == "instance.failing" and recovered["type"] == "instance.recovered"
    assert failing["data"]["plugin"] == "generic" and failing["data"]["instance"] == "main"
    assert failing["data"]["reason"].startswith("the last ")
    assert failing["data"]["health"]["consecutive_failures"] >= 2
    assert failing["data"]["health"]["state"] == "failing"
    assert recovered["data"]["reason"] == "an attempt succeeded again"
    assert recovered["data"]["health"]["state"] == "ok"
    assert failing["timestamp"].endswith("Z")
    ids = {got.headers["webhook-id"] for got in receiver.received}
    assert len(ids) == 2


@pytest.mark.usefixtures("instance")
def test_a_dead_letter_alerts_failing_before_the_threshold(
    store: Path | DatabaseUrl, target: FakeTarget, receiver: FakeTarget
) -> None:
    """One attempt allowed, so the first failure dead-letters: that alone is instance.failing."""
    target.reply(then=500)
    settings = box_settings(store, receiver, retry_max_attempts=1, alert_after_failures=5)
    with TestClient(create_app(settings)) as client:
        send(client, 1)
        (failing,) = alerts(receiver, 1)
    assert failing["type"] == "instance.failing"
    assert failing["data"]["reason"] == "the last attempt failed: HTTP 500; a dead letter opened"
    assert failing["data"]["health"]["dead_letters_open"] == 1


@pytest.mark.usefixtures("instance")
def test_restarts_neither_repeat_an_alert_nor_miss_a_recovery(
    store: Path | DatabaseUrl, target: FakeTarget, receiver: FakeTarget
) -> None:
    """Failing alerted; a restart while still failing sends nothing; a recovery made while no
    alerting process ran is sent by the next one that starts."""
    settings = box_settings(store, receiver)
    target.reply(then=500)
    with TestClient(create_app(settings)) as client:
        send(client, 1)
        alerts(receiver, 1)
    with TestClient(create_app(settings)) as client:  # still failing, more failures
        before = health_of(client)["consecutive_failures"]
        wait_health(client, "more failures", lambda h: h["consecutive_failures"] > before + 2)
        assert alerter_of(client).check() == []
    assert len(receiver.received) == 1
    target.reply(then=200)
    with TestClient(create_app(box_settings(store, None))) as client:  # no alerts here
        wait_health(client, "the recovery", lambda h: h["state"] == "ok")
    assert len(receiver.received) == 1
    with TestClient(create_app(settings)):
        failing, recovered = alerts(receiver, 2)
    assert [failing["type"], recovered["type"]] == ["instance.failing", "instance.recovered"]
    assert len(receiver.received) == 2


def test_an_alert_that_cannot_be_sent_is_retried_then_logged(
    store: Path | DatabaseUrl,
    receiver: FakeTarget,
    make_dead_letters: MakeDeadLetters,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A receiver that answers 500: four tries with one webhook-id, then an error line."""
    receiver.reply(then=500)
    settings = box_settings(store, receiver, alert_after_failures=1)
    db = open_database(settings.db_path).open()
    try:
        insert_instance(db, target_url="http://127.0.0.1:9/hook")
        make_dead_letters(db)
        alerter = Alerter(settings, db, backoff=0.01)
        with caplog.at_level(logging.ERROR, "ingress_box.alerts"):
            (change,) = alerter.check()
        alerter.stop()
    finally:
        db.close()
    assert change == store_health.Change("generic", "main", "failing")
    tries: list[Received] = receiver.received
    assert len(tries) == 4 and len({t.headers["webhook-id"] for t in tries}) == 1
    assert "alert instance.failing about generic/main not sent: HTTP 500" in caplog.text


def test_a_change_is_claimed_once_however_many_processes_look(
    store: Path | DatabaseUrl, make_dead_letters: MakeDeadLetters
) -> None:
    """The claim is in the database: a second look finds nothing left to send."""
    db = open_database(store).open()
    try:
        insert_instance(db)
        make_dead_letters(db)
        assert store_health.due(db, 1)
        first = db.write(store_health.claim_due(1, 1.0))
        second = db.write(store_health.claim_due(1, 2.0))
    finally:
        db.close()
    assert first == [store_health.Change("generic", "main", "failing")] and second == []


def attempt(db: Database, outcome: str, now: float) -> None:
    """One attempt at the one pending delivery, recorded as the worker records it."""
    (row,) = db.write(claim("tests", now, 60, 1))
    o = Outcome(
        seq=row.seq,
        owner="tests",
        outcome=outcome,
        started_at=now,
        duration_ms=1.0,
        error="boom",
        next_attempt_at=now,
        dead_letter_id=f"dlq_{now}",
    )
    assert db.write(record_outcome(o, now))


def test_a_run_of_failures_over_before_anyone_looked_is_still_alerted(
    store: Path | DatabaseUrl, receiver: FakeTarget, make_deliveries: MakeDeliveries
) -> None:
    """Two failures and a success, all before a look: failing, then recovered, once each."""
    settings = box_settings(store, receiver)
    db = open_database(settings.db_path).open()
    try:
        insert_instance(db, target_url="http://127.0.0.1:9/hook")
        alerter = Alerter(settings, db, backoff=0.01)
        db.write(store_health.baseline(T0))
        make_deliveries(db)
        for n, outcome in enumerate(["retry", "retry", "delivered"]):
            attempt(db, outcome, T0 + 1 + n)
        assert [c.state for c in alerter.check()] == ["failing"]
        assert [c.state for c in alerter.check()] == ["recovered"]
        assert alerter.check() == []
        alerter.stop()
    finally:
        db.close()
    failing, recovered = alerts(receiver, 2)
    assert failing["data"]["reason"] == "2 attempts in a row failed before one succeeded"
    assert recovered["type"] == "instance.recovered" and len(receiver.received) == 2


def test_what_happened_before_alerts_were_turned_on_is_not_alerted(
    store: Path | DatabaseUrl, receiver: FakeTarget, make_deliveries: MakeDeliveries
) -> None:
    """A dead letter and a run of failures, both over before alerting started: nothing sent."""
    settings = box_settings(store, receiver)
    later = time.time() + 60  # after the instance was made, so only the baseline hides them
    db = open_database(settings.db_path).open()
    try:
        insert_instance(db, target_url="http://127.0.0.1:9/hook")
        make_deliveries(db)
        attempt(db, "retry", later + 1)
        attempt(db, "dead", later + 2)
        make_deliveries(db)
        attempt(db, "delivered", later + 3)
        assert store_health.due(db, 2)  # without a starting point, both would be news
        db.write(store_health.baseline(later + 4))
        assert Alerter(settings, db).check() == []
    finally:
        db.close()
    assert receiver.received == []


def test_no_alert_url_means_no_alerter(store: Path | DatabaseUrl) -> None:
    """Alerts are off unless INGRESS_BOX_ALERT_URL is set."""
    with TestClient(create_app(box_settings(store, None))) as client:
        worker = box_of(client).worker
        assert isinstance(worker, Worker) and worker.alerter is None


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"INGRESS_BOX_ALERT_URL": "hooks.example.com"}, "INGRESS_BOX_ALERT_URL (--alert-url)"),
        (
            {"INGRESS_BOX_ALERT_URL": "https://hooks.example.com/a"},
            "INGRESS_BOX_ALERT_SECRET (--alert-secret) is required",
        ),
        ({"INGRESS_BOX_ALERT_SECRET": "not-whsec"}, "INGRESS_BOX_ALERT_SECRET (--alert-secret)"),
        ({"INGRESS_BOX_ALERT_SECRET": "whsec_"}, "INGRESS_BOX_ALERT_SECRET (--alert-secret)"),
        ({"INGRESS_BOX_ALERT_AFTER_FAILURES": "0"}, "INGRESS_BOX_ALERT_AFTER_FAILURES"),
    ],
)
def test_alert_settings_are_checked(environ: dict[str, str], problem: str) -> None:
    """A URL without a scheme, a secret that is not whsec_, a URL without a secret: refused."""
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_settings(environ)


def test_the_alert_secret_never_shows_in_an_error() -> None:
    """The refusal names the setting, never its value."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"INGRESS_BOX_ALERT_SECRET": "whsec_!!!top-secret"})
    assert "top-secret" not in str(caught.value)
