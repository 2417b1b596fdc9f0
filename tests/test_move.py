"""``ingress-box move``: a SQLite box copied into PostgreSQL delivers its pending work there,
each event once and with its webhook-id; a database that holds anything is refused."""

from __future__ import annotations

import collections
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import postgres
import pytest
from clirun import ok, run
from conftest import T0, MakeDeadLetters, MakeDeliveries, new_delivery
from fake_target import FakeTarget
from live import SECRET as INBOUND_SECRET
from live import insert_instance, running_box
from signers import sign_generic
from waiting import eventually

from ingress_box.config import CENTURY_DAYS, DatabaseUrl, load_settings
from ingress_box.store import Database, mappings, open_database
from ingress_box.store.deliveries import accept
from ingress_box.store.meta import ADMIN_TOKEN_KEY
from ingress_box.store.postgres import redacted
from ingress_box.web.auth import ensure_admin_token

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def pg() -> Iterator[DatabaseUrl]:
    """An empty PostgreSQL database (a schema of its own); skipped without a server."""
    with postgres.fresh_schema() as url:
        yield url


def _in_lane(db: Database, n: int, conversation: str | None) -> str:
    delivery = new_delivery(n, received_at=T0 + n, conversation=conversation, name="lane")
    db.write(lambda conn: accept(conn, delivery))
    return delivery.id


def _bridge_rows(file: Path) -> None:
    """A bridge with a message, an alias and an opening, as the bridge leaves them."""
    conn = sqlite3.connect(file, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO bridges (id, gateway_kind, gateway_url, gateway_session, chatwoot_url, "
            "chatwoot_account_id, chatwoot_inbox_id, chatwoot_api_token, created_at) "
            "VALUES ('b1', 'waha', 'http://gw', 'default', 'http://cw', 1, 2, 'tok', ?)",
            (T0,),
        )
        conn.execute(
            "INSERT INTO bridge_messages (bridge_id, direction, chat, wa_id, cw_message_id, "
            "created_at, updated_at) VALUES ('b1', 'inbound', 'chat-1', 'wa-1', 7, ?, ?)",
            (T0, T0),
        )
        conn.execute(
            "INSERT INTO bridge_aliases (bridge_id, alias, chat, updated_at) "
            "VALUES ('b1', 'lid-1', 'chat-1', ?)",
            (T0,),
        )
        conn.execute(
            "INSERT INTO bridge_openings (bridge_id, chat, claimed_at) VALUES ('b1', 'chat-2', ?)",
            (T0,),
        )
    finally:
        conn.close()


def _sqlite_box(
    file: Path,
    target: FakeTarget,
    make_deliveries: MakeDeliveries,
    make_dead_letters: MakeDeadLetters,
) -> tuple[list[str], list[str]]:
    """A box with pending work in two lanes and outside them (one attempted already), a dead
    letter, a mapping, a bridge and an admin token; its pending ids and its dead letter ids."""
    db = open_database(file).open()
    try:
        insert_instance(db, target_url=target.url, outbound_secret=SECRET)
        pending = [_in_lane(db, n, f"chat-{n % 2}") for n in range(1, 7)]
        pending += make_deliveries(db, 2)  # outside any lane
        # Claims every lane head and settles them as a retry (one attempt each), then one
        # more delivery dead.
        dead = make_dead_letters(db)
        db.write(mappings.upsert(mappings.Upsert("generic", "main", "s", "chat-1", "c-1"), T0))
        ensure_admin_token(db, None)
    finally:
        db.close()
    _bridge_rows(file)
    return pending, dead


def test_a_moved_box_delivers_every_pending_event_once_with_its_webhook_id(
    tmp_path: Path,
    pg: DatabaseUrl,
    target: FakeTarget,
    make_deliveries: MakeDeliveries,
    make_dead_letters: MakeDeadLetters,
) -> None:
    """Pending work moved to PostgreSQL reaches the target once each, lanes in order; dead
    letters, mappings, bridges and the admin token come along; new ids follow the copied."""
    file = tmp_path / "box.db"
    pending, dead = _sqlite_box(file, target, make_deliveries, make_dead_letters)
    before = sqlite3.connect(file)
    attempted = before.execute("SELECT count(*) FROM attempts").fetchone()[0]
    token_hash = before.execute(
        "SELECT value FROM meta WHERE key = ?", (ADMIN_TOKEN_KEY,)
    ).fetchone()
    before.close()

    result = json.loads(ok("move", "--db", str(file), "--to", pg, "--json").output)
    assert result["to"] == redacted(pg) and ":ingress@" not in result["to"]
    assert result["rows"]["deliveries"] == len(pending) + len(dead)
    assert result["rows"]["outbox"] == len(pending)
    assert result["rows"]["dead_letters"] == 1
    assert result["rows"]["attempts"] == attempted > 0
    assert result["rows"]["conversation_mappings"] == 1
    assert result["rows"]["bridges"] == result["rows"]["bridge_messages"] == 1
    assert result["rows"]["bridge_aliases"] == result["rows"]["bridge_openings"] == 1

    # The rows are from T0 (2023): kept for ever, so the hourly prune (at minute 7) keeps them.
    keep = {f"{kind}_retention_days": CENTURY_DAYS for kind in ("dedup", "payload", "dlq")}
    settings = load_settings(
        {},
        db_path=pg,
        admin_token="t" * 16,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        **keep,
    )
    with running_box(settings) as live:
        got = target.wait_for(len(pending))
        db = live.box.db

        def all_delivered() -> bool | None:
            row = db.read_one("SELECT count(*) FROM deliveries WHERE state = 'pending'")
            return row is not None and row[0] == 0 or None

        eventually(all_delivered, 15, "every moved delivery to be delivered")
        # A new delivery gets a seq after the copied ones (the identity was moved on).
        body = b'{"after": "the move"}'
        headers = {"content-type": "application/json", **sign_generic(INBOUND_SECRET, body)}
        answer = httpx.post(
            live.url + "/ingress/generic/main/events", content=body, headers=headers
        )
        assert answer.status_code == 202, answer.text
        got = target.wait_for(len(pending) + 1)
        fresh = got[-1].headers["webhook-id"]
        moved_on = db.read_one("SELECT seq FROM deliveries WHERE id = ?", (fresh,))
        assert moved_on is not None and moved_on[0] == len(pending) + len(dead) + 1
        token = db.read_one("SELECT value FROM meta WHERE key = ?", (ADMIN_TOKEN_KEY,))
        assert token is not None and tuple(token) == tuple(token_hash)
        assert db.read_one("SELECT id FROM dead_letters WHERE id = ?", (dead[0],)) is not None

    ids = collections.Counter(r.headers["webhook-id"] for r in got)
    assert ids == collections.Counter([*pending, fresh])
    # The attempted ones carry on: their attempt on PostgreSQL is the second.
    assert {r.headers["ingress-box-attempt"] for r in got} == {"1", "2"}
    for lane in ("chat-0", "chat-1"):
        order = [
            r.headers["webhook-id"]
            for r in got
            if r.headers.get("ingress-box-conversation") == lane
        ]
        assert order == sorted(order) and len(order) == 3

    listed = json.loads(ok("dlq", "list", "--db", pg, "--json").output)
    assert [d["id"] for d in listed["items"]] == dead
    found = json.loads(ok("mappings", "list", "--db", pg, "--json").output)
    assert [m["chat"] for m in found["items"]] == ["chat-1"]
    bridges = json.loads(ok("bridges", "list", "--db", pg, "--json").output)
    assert [b["id"] for b in bridges["items"]] == ["b1"]


def test_a_database_that_holds_anything_is_refused(tmp_path: Path, pg: DatabaseUrl) -> None:
    """A second move into the same database stops with one line and changes nothing."""
    file = tmp_path / "box.db"
    db = open_database(file).open()
    insert_instance(db)
    db.close()
    first = ok("move", "--db", str(file), "--to", pg, "--json", "--progress")
    assert json.loads(first.stdout)["rows"]["instances"] == 1  # the bar stays on stderr
    assert "moving" in first.stderr
    again = run("move", "--db", str(file), "--to", pg)
    assert again.exit_code == 2
    assert again.output.strip().count("\n") == 0
    assert "is not empty (table instances has rows)" in again.output
    listed = json.loads(ok("instances", "list", "--db", pg, "--json").output)
    assert len(listed["items"]) == 1


def test_move_takes_a_sqlite_file_to_a_postgresql_url(tmp_path: Path) -> None:
    """The source must be a file and the destination a PostgreSQL URL (no server needed)."""
    file = tmp_path / "box.db"
    open_database(file).open().close()
    wrong = run("move", "--db", str(file), "--to", str(tmp_path / "other.db"))
    assert wrong.exit_code == 2 and "--to must be a postgresql:// URL" in wrong.output
    already = run("move", "--db", "postgresql://u:secret@127.0.0.1:1/x", "--to", "postgresql://h/d")
    assert already.exit_code == 2 and "already a PostgreSQL database" in already.output
    missing = run("move", "--db", str(tmp_path / "none.db"), "--to", "postgresql://h/d")
    assert missing.exit_code == 1 and "no database at" in missing.output
