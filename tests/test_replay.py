"""Each attempt's answer, the attempt log's running numbers, and replay (API, lanes, CLI)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from clirun import ok, run
from conftest import T0, Clock, MakeDeliveries, new_delivery
from fake_target import FakeTarget, Received, Reply
from live import SECRET as INBOUND_SECRET
from live import LiveBox, add_instance, running_box
from signers import sign_generic
from starlette.testclient import TestClient
from test_migrations import make_0_1_0_file
from waiting import eventually

from ingress_box.config import DatabaseUrl, Settings, load_settings
from ingress_box.store import Database, retention
from ingress_box.store.deliveries import accept
from ingress_box.store.outbox import Outcome, claim, record_outcome
from ingress_box.store.replay import MAX_REPLAY_BATCH
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

URL = "/ingress/generic/main/events"
TOKEN = "replay-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
OUTBOUND_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def settings(store: Path | DatabaseUrl) -> Settings:
    return load_settings(
        {},
        db_path=store,
        admin_token=TOKEN,
        retry_max_attempts=3,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        delivery_timeout_seconds=2,
    )


@pytest.fixture
def db_path(store: Path | DatabaseUrl) -> Path | DatabaseUrl:
    """The store the CLI tests work on, on either engine."""
    return store


@pytest.fixture
def live(settings: Settings, target: FakeTarget) -> Iterator[LiveBox]:
    with running_box(settings) as box:
        add_instance(box.box, target_url=target.url, outbound_secret=OUTBOUND_SECRET)
        yield box


def send(live: LiveBox, body: bytes) -> str:
    """Send a signed webhook; the id of the delivery it made."""
    headers = {"content-type": "application/json", **sign_generic(INBOUND_SECRET, body)}
    answer = httpx.post(live.url + URL, content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    delivery_id: str = answer.json()["id"]
    return delivery_id


def admin(live: LiveBox, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, live.url + "/admin" + path, headers=AUTH, **kwargs)


def detail(live: LiveBox, delivery_id: str) -> dict[str, Any]:
    found: dict[str, Any] = admin(live, "GET", f"/deliveries/{delivery_id}").json()
    return found


def settled(live: LiveBox, delivery_id: str, state: str, attempts: int) -> dict[str, Any]:
    """The delivery once it is in ``state`` with ``attempts`` entries in its attempt log."""

    def reached() -> dict[str, Any] | None:
        found = detail(live, delivery_id)
        done = found["state"] == state and len(found["attempt_log"]) == attempts
        return found if done else None

    return eventually(reached, 10, f"{delivery_id} to be {state} after {attempts} attempts")


# -- each attempt's answer ----------------------------------------------------------------------


def test_attempt_log_keeps_the_answer_of_a_failure_and_of_a_success(
    live: LiveBox, target: FakeTarget
) -> None:
    """A 500 and the 200 after it are both logged with their status and answer body."""
    target.reply(Reply(500, body=b"down for maintenance"), then=Reply(200, body=b'{"ok": true}'))
    delivery_id = send(live, b'{"n": 1}')
    found = settled(live, delivery_id, "delivered", 2)
    failed, succeeded = found["attempt_log"]
    assert (failed["outcome"], failed["status_code"]) == ("retry", 500)
    assert failed["response"] == "down for maintenance"
    assert (succeeded["outcome"], succeeded["status_code"]) == ("delivered", 200)
    assert succeeded["response"] == '{"ok": true}'


def test_a_long_answer_is_kept_to_its_first_kib_decoded_with_replacement(
    live: LiveBox, target: FakeTarget
) -> None:
    """Only 1 KiB of an answer is kept; a character cut in two reads as U+FFFD."""
    target.reply(then=Reply(200, body=b"a" + "é".encode() * 5000))  # é is two bytes
    delivery_id = send(live, b'{"n": 1}')
    (logged,) = settled(live, delivery_id, "delivered", 1)["attempt_log"]
    assert logged["response"] == "a" + "é" * 511 + "\ufffd"


def test_an_attempt_that_got_no_answer_has_no_status_nor_response(
    live: LiveBox, target: FakeTarget
) -> None:
    """A target that does not answer in time: the attempt logs the timeout, status and
    response null."""
    target.reply(Reply(200, delay=5), then=200)
    delivery_id = send(live, b'{"n": 1}')
    first = settled(live, delivery_id, "delivered", 2)["attempt_log"][0]
    assert (first["status_code"], first["response"], first["error"]) == (None, None, "timeout")


# -- replaying one delivery ---------------------------------------------------------------------


def webhook_ids(target: FakeTarget, count: int) -> list[str]:
    return [r.headers["webhook-id"] for r in target.wait_for(count)]


def test_replay_sends_a_delivered_delivery_again_and_its_log_counts_on(
    live: LiveBox, target: FakeTarget
) -> None:
    """A replayed delivery reaches the target again with the same webhook-id, a fresh retry
    budget (ingress-box-attempt 1), and attempt numbers 1, 2 in its log."""
    delivery_id = send(live, b'{"n": 1}')
    settled(live, delivery_id, "delivered", 1)
    answer = admin(live, "POST", f"/deliveries/{delivery_id}/replay")
    assert answer.status_code == 202
    assert answer.json() == {"id": delivery_id, "state": "pending"}
    found = settled(live, delivery_id, "delivered", 2)
    assert webhook_ids(target, 2) == [delivery_id, delivery_id]
    assert [r.headers["ingress-box-attempt"] for r in target.wait_for(2)] == ["1", "1"]
    assert [a["attempt"] for a in found["attempt_log"]] == [1, 2]
    assert found["attempts"] == 1


def test_replaying_a_dead_delivery_closes_its_dead_letter(
    live: LiveBox, target: FakeTarget
) -> None:
    """A dead delivery replayed is delivered, and its dead letter is no longer open."""
    target.reply(400, then=200)  # permanent: dead at once
    delivery_id = send(live, b'{"n": 1}')
    settled(live, delivery_id, "dead", 1)
    assert len(admin(live, "GET", "/dlq").json()["items"]) == 1
    assert admin(live, "POST", f"/deliveries/{delivery_id}/replay").status_code == 202
    found = settled(live, delivery_id, "delivered", 2)
    assert [(a["attempt"], a["status_code"]) for a in found["attempt_log"]] == [(1, 400), (2, 200)]
    assert admin(live, "GET", "/dlq").json()["items"] == []


def test_attempt_numbers_go_on_across_a_redrive(live: LiveBox, target: FakeTarget) -> None:
    """Three failed attempts, a redrive and a success are logged 1, 2, 3, 4; the retry budget
    (``attempts``) counts only the attempt since the redrive."""
    target.reply(500, 500, 500, then=200)
    delivery_id = send(live, b'{"n": 1}')
    settled(live, delivery_id, "dead", 3)
    redriven = admin(live, "POST", "/dlq/redrive", json={})
    assert redriven.json() == {"redriven": 1, "remaining": 0}
    found = settled(live, delivery_id, "delivered", 4)
    assert [a["attempt"] for a in found["attempt_log"]] == [1, 2, 3, 4]
    assert found["attempts"] == 1


def test_replaying_a_pending_delivery_is_409_already_pending(
    client: TestClient, box: Box, make_deliveries: MakeDeliveries
) -> None:
    """A delivery still in the outbox cannot be replayed: 409 already_pending."""
    (delivery_id,) = make_deliveries(box.db)
    answer = client.post(f"/admin/deliveries/{delivery_id}/replay", headers=AUTH)
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "already_pending"


def test_replaying_an_unknown_delivery_is_404(client: TestClient) -> None:
    """No such delivery: 404 not_found."""
    answer = client.post("/admin/deliveries/msg_nope/replay", headers=AUTH)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


def deliver_now(db: Database, at: float) -> None:
    """Settle every claimable row as delivered at ``at``, as the worker would."""

    def op(conn: sqlite3.Connection) -> None:
        for row in claim("tests", at, 60, 1_000_000)(conn):
            outcome = Outcome(row.seq, "tests", "delivered", at, 1.0, status_code=200)
            record_outcome(outcome, at)(conn)

    db.write(op)


def test_a_delivery_whose_body_was_pruned_cannot_be_replayed(
    client: TestClient, box: Box, make_deliveries: MakeDeliveries, clock: Clock
) -> None:
    """Once retention dropped the body, a replay is 409 body_pruned and changes nothing."""
    (delivery_id,) = make_deliveries(box.db)
    deliver_now(box.db, T0)
    retention.run(box.db, box.settings, T0 + 2 * retention.DAY)
    answer = client.post(f"/admin/deliveries/{delivery_id}/replay", headers=AUTH)
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "body_pruned"
    state = box.db.read_one("SELECT state FROM deliveries WHERE id = ?", (delivery_id,))
    assert state is not None and state[0] == "delivered"
    assert box.db.read_one("SELECT 1 FROM outbox") is None


# -- lanes ----------------------------------------------------------------------------------------


def add_in_lane(db: Database, n: int, conversation: str = "chat-1") -> str:
    new = new_delivery(n, received_at=T0 + n, conversation=conversation, name="lane")
    assert db.write(lambda conn: accept(conn, new))
    return new.id


def claimed_ids(db: Database, at: float) -> list[str]:
    """Claim what is claimable and settle it delivered; the ids in claim order."""

    def op(conn: sqlite3.Connection) -> list[str]:
        rows = claim("tests", at, 60, 1_000_000)(conn)
        for row in rows:
            record_outcome(Outcome(row.seq, "tests", "delivered", at, 1.0), at)(conn)
        return [row.event.id for row in rows]

    ids: list[str] = db.write(op)
    return ids


def test_a_replayed_event_goes_to_the_back_of_its_lane(
    client: TestClient, box: Box, clock: Clock
) -> None:
    """Replaying the first event of a conversation queues it behind the one still waiting."""
    first = add_in_lane(box.db, 1)
    assert claimed_ids(box.db, T0 + 10) == [first]
    second = add_in_lane(box.db, 2)
    assert client.post(f"/admin/deliveries/{first}/replay", headers=AUTH).status_code == 202
    third = add_in_lane(box.db, 3)
    assert claimed_ids(box.db, T0 + 20) == [second]
    assert claimed_ids(box.db, T0 + 30) == [first]
    assert claimed_ids(box.db, T0 + 40) == [third]


def test_a_replayed_range_keeps_its_order_within_a_lane(
    client: TestClient, box: Box, clock: Clock
) -> None:
    """A range replay queues a lane's events in the order they were received."""
    ids = [add_in_lane(box.db, n) for n in (1, 2, 3)]
    for expected in ids:
        assert claimed_ids(box.db, T0 + 10) == [expected]
    answer = client.post("/admin/replay", headers=AUTH, json={"since": T0})
    assert answer.json() == {"replayed": 3, "remaining": 0, "pruned": 0}
    assert [claimed_ids(box.db, T0 + 20) for _ in ids] == [[i] for i in ids]


# -- replaying a range ------------------------------------------------------------------------


def received_at(live: LiveBox, delivery_id: str) -> float:
    value: float = detail(live, delivery_id)["received_at"]
    return value


def test_range_replay_with_a_limit_replays_the_oldest_and_says_what_remains(
    live: LiveBox, target: FakeTarget
) -> None:
    """Five delivered: a limit of 3 replays the three oldest; the rest, from the fourth's time,
    replays two more; every delivery reached the target exactly twice."""
    ids = [send(live, b'{"n": %d}' % n) for n in range(5)]
    for delivery_id in ids:
        settled(live, delivery_id, "delivered", 1)
    since = received_at(live, ids[0])
    first = admin(live, "POST", "/replay", json={"since": since, "limit": 3})
    assert first.json() == {"replayed": 3, "remaining": 2, "pruned": 0}
    target.wait_for(8)
    fourth = received_at(live, ids[3])
    rest = admin(live, "POST", "/replay", json={"since": fourth, "state": "delivered"})
    assert rest.json() == {"replayed": 2, "remaining": 0, "pruned": 0}
    for delivery_id in ids:
        settled(live, delivery_id, "delivered", 2)
    assert sorted(webhook_ids(target, 10)) == sorted(ids * 2)


def test_range_replay_filters_by_instance_and_time(
    client: TestClient, box: Box, make_deliveries: MakeDeliveries
) -> None:
    """Only the instance and the [since, until) window asked for are replayed (since given in
    ISO 8601: T0)."""
    early = make_deliveries(box.db, 2, instance="main", received_at=T0)
    late = make_deliveries(box.db, 2, instance="main", received_at=T0 + 100)
    other = make_deliveries(box.db, 2, instance="other", received_at=T0)
    deliver_now(box.db, T0 + 200)
    answer = client.post(
        "/admin/replay",
        headers=AUTH,
        json={"instance": "main", "since": "2023-11-14T22:13:20Z", "until": T0 + 50},
    )
    assert answer.json() == {"replayed": 2, "remaining": 0, "pruned": 0}
    pending = {r[0] for r in box.db.read("SELECT id FROM deliveries WHERE state = 'pending'")}
    assert pending == set(early) and not pending & set(late + other)


def test_range_replay_goes_past_one_batch_and_skips_pruned_bodies(
    client: TestClient, box: Box, make_deliveries: MakeDeliveries
) -> None:
    """More than a batch is replayed in several transactions; a pruned body is counted apart."""
    make_deliveries(box.db, MAX_REPLAY_BATCH + 5)
    deliver_now(box.db, T0)
    box.db.write(lambda conn: conn.execute("UPDATE deliveries SET body = NULL WHERE seq IN (1, 2)"))
    answer = client.post("/admin/replay", headers=AUTH, json={"since": 0})
    assert answer.json() == {"replayed": MAX_REPLAY_BATCH + 3, "remaining": 0, "pruned": 2}
    outbox = box.db.read_one("SELECT count(*) FROM outbox")
    assert outbox is not None and outbox[0] == MAX_REPLAY_BATCH + 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "since is required"),
        ({"since": "yesterday"}, "since must be unix seconds or ISO 8601"),
        ({"since": T0, "state": "pending"}, "state must be one of delivered, dead"),
        ({"since": T0, "until": T0 - 1}, "until must be later than since"),
        ({"since": T0, "limit": 0}, "limit must be at least 1"),
    ],
)
def test_range_replay_refuses_bad_input(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    """A bad range is 400 invalid_input naming the field."""
    answer = client.post("/admin/replay", headers=AUTH, json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith(message)


# -- the CLI ------------------------------------------------------------------------------------


def states(db: Database) -> dict[str, str]:
    return {r[0]: r[1] for r in db.read("SELECT id, state FROM deliveries")}


def test_cli_deliveries_replay_queues_the_delivery_again(
    db_path: Path, db: Database, make_deliveries: MakeDeliveries
) -> None:
    """``deliveries replay ID --json`` answers like the API and leaves the delivery pending."""
    (delivery_id,) = make_deliveries(db)
    deliver_now(db, time.time())
    result = ok("deliveries", "replay", delivery_id, "--db", str(db_path), "--json")
    assert json.loads(result.stdout) == {"id": delivery_id, "state": "pending"}
    assert states(db) == {delivery_id: "pending"}


def test_cli_deliveries_replay_of_a_pending_delivery_fails_with_the_reason(
    db_path: Path, db: Database, make_deliveries: MakeDeliveries
) -> None:
    """A pending delivery: exit 1 and the reason on stderr."""
    (delivery_id,) = make_deliveries(db)
    result = run("deliveries", "replay", delivery_id, "--db", str(db_path))
    assert result.exit_code == 1
    assert "still pending" in result.output


def test_cli_replay_replays_a_range_and_reports_it(
    db_path: Path, db: Database, make_deliveries: MakeDeliveries
) -> None:
    """``replay --since --until --limit --json``: the oldest of the window, and what remains."""
    ids = make_deliveries(db, 3, received_at=T0)
    make_deliveries(db, 1, received_at=T0 + 100)
    deliver_now(db, time.time())
    since = datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%dT%H:%M:%S")  # no offset: UTC
    result = ok(
        "replay", "--since", since, "--until", str(T0 + 50), "--limit", "2", "--json",
        "--db", str(db_path),
    )  # fmt: skip
    assert json.loads(result.stdout) == {"replayed": 2, "remaining": 1, "pruned": 0}
    assert [i for i, s in states(db).items() if s == "pending"] == ids[:2]


def test_cli_replay_refuses_a_time_it_cannot_read(db_path: Path, db: Database) -> None:
    """A --since that is neither unix seconds nor ISO 8601 is a usage error (exit 2)."""
    result = run("replay", "--since", "last tuesday", "--db", str(db_path))
    assert result.exit_code == 2 and "--since must be unix seconds" in result.output


def test_cli_replay_received_requests_look_like_the_first_ones(
    settings: Settings, target: FakeTarget
) -> None:
    """Replayed from the CLI, a running serve sends the same body and webhook-id again."""
    with running_box(settings) as live:
        add_instance(live.box, target_url=target.url, outbound_secret=OUTBOUND_SECRET)
        delivery_id = send(live, b'{"n": 1}')
        settled(live, delivery_id, "delivered", 1)
        ok("replay", "--since", "0", "--yes", "--db", str(settings.db_path))
        first, again = target.wait_for(2)
    assert same_request(first, again)


def same_request(a: Received, b: Received) -> bool:
    varying = {"webhook-timestamp", "webhook-signature"}
    return a.body == b.body and {k: v for k, v in a.headers.items() if k not in varying} == {
        k: v for k, v in b.headers.items() if k not in varying
    }


def test_tail_prints_the_status_and_answer_of_a_success(
    db_path: Path, db: Database, make_deliveries: MakeDeliveries
) -> None:
    """tail shows a delivered attempt's status and the start of its answer, --json too."""
    make_deliveries(db)
    at = time.time()

    def op(conn: sqlite3.Connection) -> None:
        (row,) = claim("tests", at, 60, 10)(conn)
        answered = Outcome(row.seq, "tests", "delivered", at, 3.0, 200, response='{"ok":\n true}')
        record_outcome(answered, at)(conn)

    db.write(op)
    lines = ok("tail", "--no-follow", "--db", str(db_path)).stdout.splitlines()
    assert lines[-1].endswith('attempt 1  HTTP 200  3.0 ms  {"ok": true}')
    events = ok("tail", "--no-follow", "--json", "--db", str(db_path)).stdout.splitlines()
    assert json.loads(events[-1])["response"] == '{"ok":\n true}'


# -- an older file ------------------------------------------------------------------------------


def test_an_upgraded_log_counts_on_across_a_redrive(tmp_path: Path) -> None:
    """A 0.1.0 log numbered 1, 2, 1 by a redrive reads 1, 2, 3 once upgraded, without answers;
    its outbox row keeps its place."""
    path = tmp_path / "old.db"
    make_0_1_0_file(path)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO deliveries (seq, id, plugin_id, instance_id, route, provider_delivery_id, "
        "method, body, state, attempts, received_at) VALUES "
        "(7, 'msg_old', 'generic', 'main', 'events', 'p-1', 'POST', x'7b7d', 'pending', 1, 1.0)"
    )
    for attempt in (1, 2, 1):
        conn.execute(
            "INSERT INTO attempts (delivery_seq, attempt, started_at, duration_ms, outcome) "
            "VALUES (7, ?, 2.0, 1.0, 'retry')",
            (attempt,),
        )
    conn.execute("INSERT INTO outbox (delivery_seq, lane, available_at) VALUES (7, NULL, 3.0)")
    conn.commit()
    conn.close()
    db = Database(path).open()
    try:
        logged = db.read("SELECT attempt, response FROM attempts ORDER BY id")
        assert [tuple(r) for r in logged] == [(1, None), (2, None), (3, None)]
        row = db.read_one("SELECT seq, delivery_seq FROM outbox")
        assert row is not None and tuple(row) == (7, 7)
    finally:
        db.close()
