"""The outbox worker end to end: the real app under uvicorn, a real local HTTP target."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_target import FakeTarget, Reply
from live import SECRET as INBOUND_SECRET
from live import LiveBox, add_instance, running_box
from signers import sign_generic
from standardwebhooks.webhooks import Webhook
from waiting import eventually

from ingress_box.config import DatabaseUrl, Settings, load_settings
from ingress_box.retry import Decision
from ingress_box.store import dead_letters
from ingress_box.store import outbox as store_outbox
from ingress_box.worker import Worker

pytestmark = pytest.mark.both_stores

URL = "/ingress/generic/main/events"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def settings(store: Path | DatabaseUrl) -> Settings:
    return load_settings(
        {},
        db_path=store,
        admin_token="t" * 16,
        retry_max_attempts=3,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        delivery_timeout_seconds=2,
    )


@pytest.fixture
def live(settings: Settings, target: FakeTarget) -> Iterator[LiveBox]:
    with running_box(settings) as box:
        add_instance(box.box, target_url=target.url, outbound_secret=SECRET)
        yield box


def send(live: LiveBox, body: bytes, **extra: str) -> httpx.Response:
    headers = {"content-type": "application/json", **sign_generic(INBOUND_SECRET, body), **extra}
    return httpx.post(live.url + URL, content=body, headers=headers)


def state_of(live: LiveBox, provider_id: str) -> tuple[str, int]:
    row = live.box.db.read_one(
        "SELECT state, attempts FROM deliveries WHERE provider_delivery_id = ?", (provider_id,)
    )
    assert row is not None
    return row[0], row[1]


def wait_state(live: LiveBox, provider_id: str, state: str, timeout: float = 10) -> int:
    """The delivery's attempts, once it is in ``state``."""

    def reached() -> tuple[str, int] | None:
        found = state_of(live, provider_id)
        return found if found[0] == state else None

    return eventually(reached, timeout, f"{provider_id} to be {state}")[1]


def count(live: LiveBox, sql: str) -> int:
    row = live.box.db.read_one(sql)
    assert row is not None
    return int(row[0])


def test_raw_bytes_reach_the_target_signed_per_standard_webhooks(
    live: LiveBox, target: FakeTarget
) -> None:
    """The target gets the exact bytes and headers any Standard Webhooks library verifies."""
    body = b'{"text":"ol\xc3\xa1", "n": 1.50}'
    send(live, body, **{"x-delivery": "d-1", "x-conversation": "chat-9"})
    got = target.wait_for(1)[0]
    assert got.body == body
    Webhook(SECRET).verify(got.body, got.headers)
    assert got.headers["ingress-box-plugin"] == "generic"
    assert got.headers["ingress-box-instance"] == "main"
    assert got.headers["ingress-box-route"] == "events"
    assert got.headers["ingress-box-delivery-id"] == "d-1"
    assert got.headers["ingress-box-conversation"] == "chat-9"
    assert got.headers["ingress-box-attempt"] == "1"
    assert got.headers["content-type"] == "application/json"
    wait_state(live, "d-1", "delivered")


def test_a_duplicate_storm_is_forwarded_once(live: LiveBox, target: FakeTarget) -> None:
    """40 identical posts at once produce exactly one forward."""
    body = b'{"storm":1}'
    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        list(pool.map(lambda _: send(live, body, **{"x-delivery": "s-1"}), range(40)))
    assert wait_state(live, "s-1", "delivered") == 1
    # One row, claimed once, settled: nothing is left that could be forwarded a second time.
    assert count(live, "SELECT count(*) FROM deliveries") == 1
    assert len(target.received) == 1


def test_two_failures_then_success_is_delivered_once_after_three_attempts(
    live: LiveBox, target: FakeTarget
) -> None:
    """500, 500, 200: delivered, three attempts, one webhook-id throughout."""
    target.reply(500, 500)
    send(live, b'{"n":1}', **{"x-delivery": "r-1"})
    assert wait_state(live, "r-1", "delivered") == 3
    got = target.wait_for(3)
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert [r.headers["ingress-box-attempt"] for r in got] == ["1", "2", "3"]


def test_a_400_is_dead_after_one_attempt(live: LiveBox, target: FakeTarget) -> None:
    """Other 4xx are permanent: one attempt, then the dead-letter queue."""
    target.reply(400)
    send(live, b'{"n":1}', **{"x-delivery": "p-1"})
    assert wait_state(live, "p-1", "dead") == 1
    row = live.box.db.read_one("SELECT last_error, attempts FROM dead_letters")
    assert row is not None and row[0].startswith("HTTP 400") and row[1] == 1


def test_always_503_is_dead_after_the_budget_and_redrive_delivers_once(
    live: LiveBox, target: FakeTarget
) -> None:
    """Exhausted retries dead-letter; a redrive after recovery delivers; a second does nothing."""
    target.reply(503, 503, 503)
    send(live, b'{"n":1}', **{"x-delivery": "b-1"})
    assert wait_state(live, "b-1", "dead") == 3
    first_id = target.wait_for(3)[0].headers["webhook-id"]
    target.reply()
    db = live.box.db
    assert db.write(dead_letters.redrive(dead_letters.Selection(), 100, time.time())) == (1, 0)
    assert live.box.worker is not None
    live.box.worker.wake()
    wait_state(live, "b-1", "delivered")
    assert target.wait_for(4)[3].headers["webhook-id"] == first_id
    assert db.write(dead_letters.redrive(dead_letters.Selection(), 100, time.time())) == (0, 0)
    assert count(live, "SELECT count(*) FROM outbox") == 0  # nothing left to deliver
    assert len(target.received) == 4


def test_a_429_with_retry_after_is_waited_out(tmp_path: Path, target: FakeTarget) -> None:
    """Retry-After is a floor on the next attempt's delay."""
    settings = load_settings(
        {},
        db_path=tmp_path / "box.db",
        admin_token="t" * 16,
        retry_base_seconds=0.01,
        retry_max_seconds=5,
    )
    target.reply(Reply(429, retry_after=1))
    with running_box(settings) as live:
        add_instance(live.box, target_url=target.url, outbound_secret=SECRET)
        send(live, b'{"n":1}', **{"x-delivery": "l-1"})
        got = target.wait_for(2)
        assert got[1].at - got[0].at >= 0.95


def test_conversation_order_holds_while_the_head_is_retried(
    live: LiveBox, target: FakeTarget
) -> None:
    """A failing head keeps the rest of its conversation waiting, then all arrive in order."""
    target.reply(500, 500)
    for i in range(5):
        send(live, f'{{"i":{i}}}'.encode(), **{"x-delivery": f"o-{i}", "x-conversation": "c1"})
    for i in range(5):
        wait_state(live, f"o-{i}", "delivered")
    order = [r.headers["ingress-box-delivery-id"] for r in target.received]
    assert order == ["o-0", "o-0", "o-0", "o-1", "o-2", "o-3", "o-4"]


def test_other_conversations_are_not_held_by_a_failing_lane(
    live: LiveBox, target: FakeTarget
) -> None:
    """While one lane waits on retries, an independent event is delivered."""
    target.answer_with(
        lambda r: Reply(503 if r.headers.get("ingress-box-conversation") == "slow" else 200)
    )
    send(live, b'{"a":1}', **{"x-delivery": "slow-1", "x-conversation": "slow"})
    send(live, b'{"b":1}', **{"x-delivery": "fast-1", "x-conversation": "fast"})
    wait_state(live, "fast-1", "delivered")


def test_strict_lane_waits_for_its_dead_head(settings: Settings, target: FakeTarget) -> None:
    """Strict policy: after the head dies, the rest of the lane waits for a redrive."""
    target.reply(400)
    with running_box(settings) as live:
        add_instance(live.box, target_url=target.url, outbound_secret=SECRET, lane_policy="strict")
        send(live, b'{"i":0}', **{"x-delivery": "h-0", "x-conversation": "c"})
        send(live, b'{"i":1}', **{"x-delivery": "h-1", "x-conversation": "c"})
        wait_state(live, "h-0", "dead")
        # No worker can take h-1: the claim every worker makes finds nothing in the lane.
        probe = store_outbox.claim("probe", time.time(), 60, 10)
        assert live.box.db.write(probe) == []
        assert state_of(live, "h-1") == ("pending", 0)
        live.box.db.write(dead_letters.redrive(dead_letters.Selection(), 10, time.time()))
        assert live.box.worker is not None
        live.box.worker.wake()
        wait_state(live, "h-1", "delivered")
        order = [r.headers["ingress-box-delivery-id"] for r in target.received]
        assert order == ["h-0", "h-0", "h-1"]


def test_no_target_url_is_dead_lettered(settings: Settings, target: FakeTarget) -> None:
    """An instance without a target cannot deliver: the event is dead, visible, redrivable."""
    with running_box(settings) as live:
        add_instance(live.box, outbound_secret=SECRET)
        send(live, b'{"i":0}', **{"x-delivery": "n-0"})
        wait_state(live, "n-0", "dead")


def test_an_outcome_in_the_database_has_been_observed(live: LiveBox, target: FakeTarget) -> None:
    """Observers (the metrics) run before the outcome is recorded: a reader who sees the outcome
    in the database finds it counted too, however slow the observers are."""
    assert isinstance(live.box.worker, Worker)
    observed: list[str] = []

    def slow_observer(row: store_outbox.Claimed, decision: Decision, seconds: float) -> None:
        time.sleep(0.3)  # a slow observer, to widen the window an ordering bug would leave
        observed.append(row.event.provider_delivery_id)

    live.box.worker.observers.insert(0, slow_observer)
    target.reply(400)
    send(live, b'{"n":1}', **{"x-delivery": "w-1"})
    wait_state(live, "w-1", "dead")
    assert observed == ["w-1"]
