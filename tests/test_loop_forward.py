"""Forward on the event loop: serve's worker attempts a handed row of a ``forward`` instance on
the loop that accepted it, and drains keep the rest (other handlers, rows that find every slot
busy, every row while a drain is at work). Loop and drains together never make more than
``workers`` attempts at once, and a shutdown lets the loop's attempt in flight end and records
it. Through the real app."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from conftest import box_of
from fake_target import FakeTarget, Reply, running_target
from live import SECRET, add_instance
from signers import sign_generic
from starlette.testclient import TestClient
from waiting import eventually

from ingress_box import worker as worker_module
from ingress_box.app import create_app
from ingress_box.config import Settings
from ingress_box.delivery import Event, HandlerContext
from ingress_box.handlers import register_handler
from ingress_box.retry import Decision
from ingress_box.store import open_database
from ingress_box.store.outbox import Claimed
from ingress_box.worker import Worker


def on_the_loop() -> bool:
    """Whether the caller runs on a running event loop (not on a drain thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture(autouse=True)
def _no_minute_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep starts a drain at every minute of the wall clock: a webhook sent while it looks
    in the outbox goes to the drains, rightly, but these tests say where a row goes."""
    monkeypatch.setattr(worker_module, "SWEEP", lambda _when: False)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def drains_idle(client: TestClient) -> None:
    """Wait until no drain makes an attempt: until then the loop leaves new rows to them."""
    worker = box_of(client).worker
    assert isinstance(worker, Worker)
    eventually(lambda: worker._delivering == 0, 10, "the drains to end their attempts")


def attempts_seen(client: TestClient) -> list[tuple[str, bool]]:
    """(provider delivery id, made on the loop) of every attempt from now on."""
    worker = box_of(client).worker
    assert isinstance(worker, Worker)
    seen: list[tuple[str, bool]] = []

    def observe(row: Claimed, decision: Decision, seconds: float) -> None:
        seen.append((row.event.provider_delivery_id, on_the_loop()))

    worker.observers.append(observe)
    return seen


def send(client: TestClient, n: int) -> None:
    body = b'{"n": %d}' % n
    answer = client.post(
        "/ingress/generic/main/events",
        content=body,
        headers=sign_generic(SECRET, body, msg_id=f"loop-{n}"),
    )
    assert answer.status_code == 202


def states(client: TestClient) -> list[str]:
    rows = box_of(client).db.read("SELECT state FROM deliveries ORDER BY received_at, id")
    return [row["state"] for row in rows]


def test_a_forward_instance_is_attempted_on_the_event_loop(
    client: TestClient, target: FakeTarget
) -> None:
    add_instance(box_of(client), target_url=target.url)
    seen = attempts_seen(client)
    drains_idle(client)
    for n in range(3):
        send(client, n)
        target.wait_for(n + 1)
    eventually(lambda: states(client) == ["delivered"] * 3, 10, "three delivered")
    assert seen == [(f"loop-{n}", True) for n in range(3)]
    assert target.received[0].headers["webhook-id"].startswith("msg_")


def test_another_handler_runs_on_a_drain(client: TestClient) -> None:
    handled: list[bool] = []

    def handler(event: Event, ctx: HandlerContext) -> None:
        handled.append(on_the_loop())

    register_handler("test-loop-other", handler)
    add_instance(box_of(client), handler="test-loop-other")
    send(client, 1)
    eventually(lambda: states(client) == ["delivered"], 10, "the delivery")
    assert handled == [False]


def test_loop_and_drains_make_at_most_workers_attempts_at_once(
    settings: Settings, target: FakeTarget
) -> None:
    """One slot: the first webhook holds it on the loop for its second at the target; the two
    after it go to the drains, which wait for the slot. The target never sees two at once."""
    target.reply(then=Reply(200, delay=1.0))
    with TestClient(create_app(replace(settings, workers=1))) as client:
        add_instance(box_of(client), target_url=target.url)
        seen = attempts_seen(client)
        drains_idle(client)
        for n in range(3):
            send(client, n)
        arrivals = [r.at for r in target.wait_for(3, timeout=30)]
        eventually(lambda: states(client) == ["delivered"] * 3, 10, "three delivered")
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) > 0.9, gaps  # each waited for the answer before it
    assert seen[0] == ("loop-0", True)
    assert {on_loop for _, on_loop in seen[1:]} == {False}


def test_a_shutdown_lets_the_loops_attempt_end_and_records_it(
    settings: Settings, target: FakeTarget
) -> None:
    target.reply(then=Reply(200, delay=1.0))
    with TestClient(create_app(settings)) as client:
        add_instance(box_of(client), target_url=target.url)
        drains_idle(client)
        send(client, 1)
        target.wait_for(1)  # the answer comes in a second: shut down meanwhile
    db = open_database(settings.db_path).open()
    try:
        [row] = db.read("SELECT state, attempts FROM deliveries")
        assert (row["state"], row["attempts"]) == ("delivered", 1)
        assert db.read("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0
    finally:
        db.close()
    assert len(target.received) == 1


def test_while_a_drain_is_at_work_new_rows_go_to_the_drains(settings: Settings) -> None:
    """A drain busy (here with another handler's slow attempt) means a backlog may be forming:
    a forward row accepted then goes to the drains too; once they idle, the loop takes rows
    again."""
    release = threading.Event()

    def slow(event: Event, ctx: HandlerContext) -> None:
        release.wait(10)

    register_handler("test-loop-slow", slow)
    with running_target() as target, TestClient(create_app(settings)) as client:
        box = box_of(client)
        add_instance(box, "generic", "slow", handler="test-loop-slow")
        add_instance(box, target_url=target.url)
        seen = attempts_seen(client)
        worker = box.worker
        assert isinstance(worker, Worker)
        drains_idle(client)
        body = b"{}"
        answer = client.post(
            "/ingress/generic/slow/events",
            content=body,
            headers=sign_generic(SECRET, body, msg_id="slow-1"),
        )
        assert answer.status_code == 202
        eventually(lambda: worker._delivering > 0, 10, "a drain at work")
        send(client, 1)
        target.wait_for(1)
        release.set()
        eventually(lambda: len(seen) == 2, 10, "both attempts")
        drains_idle(client)
        send(client, 2)
        target.wait_for(2)
        eventually(lambda: len(seen) == 3, 10, "the third attempt")
    assert sorted(seen) == [("loop-1", False), ("loop-2", True), ("slow-1", False)]
