"""Search of kept bodies (``?q=``: FTS5, or PostgreSQL's full-text search), the time filter
(``?since=``/``?until=``) and the export of a filtered list (``/admin/deliveries/export``)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, T0, scalar
from hypothesis import given, settings
from hypothesis import strategies as st
from live import SECRET, add_instance
from signers import sign_generic
from starlette.testclient import TestClient
from test_migrations import make_0_1_0_file
from waiting import eventually

from ingress_box import indexer, listing
from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, load_settings
from ingress_box.indexer import Indexer
from ingress_box.store import Database, open_database, outbox, retention
from ingress_box.store.deliveries import NewDelivery, accept, phrase
from ingress_box.store.search import index_pending
from ingress_box.store.sql import Conn, dialect
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

Headers = dict[str, str]
DAY = 86_400.0


@pytest.fixture(scope="module")
def fts_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """One database for many examples of a property (nothing is written to it)."""
    db = Database(tmp_path_factory.mktemp("fts") / "box.db").open()
    add(db, 1, b'{"text": "some words to match"}')
    indexed(db)
    yield db
    db.close()


def add(
    db: Database,
    n: int,
    body: bytes | None = None,
    instance: str = "main",
    at: float = T0,
    **changes: Any,
) -> str:
    """Accept delivery ``n`` of generic/``instance`` with ``body``; its id."""
    delivery = NewDelivery(
        **{
            "id": f"msg_search{n:04d}",
            "plugin_id": "generic",
            "instance_id": instance,
            "route": "events",
            "provider_delivery_id": f"evt-{n}",
            "conversation": None,
            "method": "POST",
            "subpath": "",
            "content_type": "application/json",
            "headers": "{}",
            "body": body if body is not None else b'{"n": %d}' % n,
            "received_at": at,
            **changes,
        }
    )
    db.write(lambda conn: accept(conn, delivery))
    return delivery.id


def indexed(db: Database) -> int:
    """Run the indexer's op until nothing waits (what serve's indexer does every second)."""
    total = 0
    while done := db.write(index_pending()):
        total += done
    return total


def search(client: TestClient, headers: Headers, q: str, **params: str) -> list[str]:
    answer = client.get("/admin/deliveries", params={"q": q, **params}, headers=headers)
    assert answer.status_code == 200, answer.text
    return [item["id"] for item in answer.json()["items"]]


def documents_with(db: Database, word: str) -> int:
    """How many bodies the index itself holds ``word`` for (FTS5's vocabulary of it, or the
    rows whose tsvector has it), so a removal that left words behind shows even where a MATCH
    would hide it."""

    def op(conn: Conn) -> int:
        if dialect(conn) == "postgresql":
            found = "SELECT count(*) FROM deliveries_search WHERE ? = ANY(tsvector_to_array(words))"
            return int(conn.execute(found, (word,)).fetchone()[0])
        conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.words "
            "USING fts5vocab(main, deliveries_search, 'row')"
        )
        row = conn.execute("SELECT doc FROM temp.words WHERE term = ?", (word,)).fetchone()
        return 0 if row is None else int(row[0])

    return db.write(op)


def deliver(db: Database, at: float) -> None:
    """Claim every pending delivery and record it delivered at ``at``."""
    for row in db.write(outbox.claim("w", at, 60, 100)):
        db.write(
            outbox.record_outcome(
                outbox.Outcome(
                    seq=row.seq,
                    owner="w",
                    outcome="delivered",
                    started_at=at,
                    duration_ms=1,
                ),
                at,
            )
        )


# -- search ---------------------------------------------------------------------------------


def test_search_finds_a_word_of_a_kept_body(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """?q= lists the deliveries whose body holds the word, and only those."""
    wanted = add(box.db, 1, b'{"customer": "Ada Lovelace", "order": 7}')
    add(box.db, 2, b'{"customer": "Grace Hopper", "order": 8}')
    assert indexed(box.db) == 2
    assert search(client, admin_headers, "lovelace") == [wanted]
    assert search(client, admin_headers, "Ada Lovelace") == [wanted]
    assert search(client, admin_headers, "Lovelace Ada") == []  # a phrase: words in order


def test_serve_indexes_an_accepted_body_by_itself(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """The indexer in serve's lifespan picks up the body of a webhook it accepted within about
    a second (its quiet look, for bodies stored otherwise, is a minute away)."""
    add_instance(box, target_url="http://127.0.0.1:9/hook")
    body = b'{"note": "zebra crossing"}'
    headers = {"content-type": "application/json", **sign_generic(SECRET, body, msg_id="z-1")}
    answer = client.post("/ingress/generic/main/events", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    wanted = answer.json()["id"]
    eventually(lambda: search(client, admin_headers, "zebra") == [wanted], 10, "the body indexed")


def test_serve_indexes_a_body_stored_otherwise_at_its_quiet_look(
    store: Path | DatabaseUrl, admin_headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body no accept of this process announced (another process's, a probe's) is found by
    the indexer's look every QUIET_SECONDS: the second one too, added once a round of the
    indexer has passed (so the round at start-up cannot be what finds it)."""
    monkeypatch.setattr(indexer, "QUIET_SECONDS", 0.05)
    settings = load_settings({}, db_path=store, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings, run_worker=False)) as client:
        box: Box = client.app.state.box  # type: ignore[attr-defined]
        for n, word in enumerate(["quokka", "numbat"]):
            wanted = add(box.db, n, b'{"note": "%s"}' % word.encode())
            found = eventually(partial(search, client, admin_headers, word), 10, f"{word} found")
            assert found == [wanted]


def test_a_pruned_body_is_no_longer_found(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """Once retention drops a delivered body, searching its words finds nothing, and the
    index still agrees with the bodies."""
    gone = add(box.db, 1, b'{"secret_word": "platypus"}')
    kept = add(box.db, 2, b'{"secret_word": "platypus", "again": true}', at=T0 + 5 * DAY)
    indexed(box.db)
    deliver(box.db, T0)
    box.db.write(
        lambda conn: conn.execute(
            "UPDATE deliveries SET delivered_at = ? WHERE id = ?", (T0 + 10 * DAY, kept)
        )
    )
    assert search(client, admin_headers, "platypus") == [kept, gone]
    report = retention.run(box.db, box.settings, T0 + 2 * DAY)
    assert report["payloads_dropped"] == 1
    assert search(client, admin_headers, "platypus") == [kept]
    assert documents_with(box.db, "platypus") == 1


def test_a_deleted_delivery_leaves_the_index(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """Pruning whole deliveries (the dedup window) takes their words out of the index."""
    add(box.db, 1, b'{"word": "axolotl"}')
    indexed(box.db)
    deliver(box.db, T0)
    retention.run(box.db, box.settings, T0 + 30 * DAY)
    assert scalar(box.db, "SELECT count(*) FROM deliveries") == 0
    assert search(client, admin_headers, "axolotl") == []
    assert documents_with(box.db, "axolotl") == 0


def test_search_keeps_to_the_other_filters(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """?q= with ?instance= finds the word only in that instance's deliveries."""
    mine = add(box.db, 1, b'{"text": "walrus"}', instance="a")
    add(box.db, 2, b'{"text": "walrus"}', instance="b")
    indexed(box.db)
    assert search(client, admin_headers, "walrus", instance="a") == [mine]
    assert search(client, admin_headers, "walrus", instance="c") == []


def test_a_body_that_is_not_utf8_is_not_indexed(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """Binary bodies stay out of the index: their bytes spell no words to search."""
    add(box.db, 1, b"\xff\xfe gecko \x00\x81")
    assert indexed(box.db) == 0
    assert search(client, admin_headers, "gecko") == []
    assert scalar(box.db, "SELECT searchable FROM deliveries") == 0


def test_a_text_body_holding_a_nul_is_kept_and_the_others_still_indexed(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """A UTF-8 body with a NUL (which PostgreSQL text cannot hold) never stops the indexer:
    the bodies beside it are found, and it is marked done."""
    add(box.db, 1, b'{"word": "wombat"}\x00 after the NUL')
    wanted = add(box.db, 2, b'{"word": "wombat"}')
    assert indexed(box.db) == 2
    assert search(client, admin_headers, "wombat")[0] == wanted
    assert scalar(box.db, "SELECT count(*) FROM deliveries WHERE searchable = 1") == 0


def test_a_body_of_too_many_words_for_one_index_entry_is_indexed_with_its_batch(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """Two megabytes of distinct words (past PostgreSQL's 1 MB tsvector) never stop the
    indexer: the big body is found by its first words, and the body beside it too."""
    words = " ".join(f"w{n:07d}" for n in range(250_000))
    big = add(box.db, 1, ("capybara " + words).encode())
    small = add(box.db, 2, b'{"word": "capybara"}')
    assert indexed(box.db) == 2
    assert search(client, admin_headers, "capybara") == [small, big]


HOSTILE = [
    '"',
    '""',
    '"unbalanced',
    "NEAR(a b)",
    "NEAR(",
    "*",
    "star*",
    "a OR b",
    "AND",
    "NOT x",
    ")",
    "body:word",
    "^start",
    "-",
    "{body}: x",
    "ünïcødé 日本語 🦆",
    "nul\x00byte",
    "x" * 512,
]


@pytest.mark.parametrize("query", HOSTILE)
def test_a_hostile_query_is_never_a_server_error(
    client: TestClient, admin_headers: Headers, box: Box, query: str
) -> None:
    """Whatever the text, the answer is a list or 400 invalid_input, never a 500."""
    add(box.db, 1, b'{"text": "a b star"}')
    indexed(box.db)
    answer = client.get("/admin/deliveries", params={"q": query}, headers=admin_headers)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize(
    "query",
    ['say "hi"', "NEAR( x y )", "*star* dust", "a OR b", "ünïcødé 日本語"],
)
def test_query_syntax_is_matched_literally(
    client: TestClient, admin_headers: Headers, box: Box, query: str
) -> None:
    """FTS5 operators in the text are only words of the phrase (or nothing): a body holding
    the text is found, one holding its words in another order is not."""
    text = {"text": f"they {query} there"}
    wanted = add(box.db, 1, json.dumps(text, ensure_ascii=False).encode())
    reordered = {"text": " ".join(reversed(query.split()))}
    add(box.db, 2, json.dumps(reordered, ensure_ascii=False).encode())
    indexed(box.db)
    assert search(client, admin_headers, query) == [wanted]


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])))
def test_any_text_makes_a_valid_phrase(fts_db: Database, text: str) -> None:
    """phrase() turns any text without a NUL (refused before) into a query FTS5 accepts."""
    fts_db.read(
        "SELECT rowid FROM deliveries_search WHERE deliveries_search MATCH ?", (phrase(text),)
    )


def test_a_search_too_long_is_400(client: TestClient, admin_headers: Headers) -> None:
    """?q= is at most 512 characters."""
    answer = client.get("/admin/deliveries", params={"q": "x" * 513}, headers=admin_headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_input"


def test_an_upgraded_file_indexes_the_bodies_it_kept(tmp_path: Path) -> None:
    """The migration marks the kept text bodies of an older file, and the indexer adds them."""
    path = tmp_path / "old.db"
    make_0_1_0_file(path)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO deliveries (id, plugin_id, instance_id, route, provider_delivery_id, "
        "method, body, received_at) VALUES "
        "('msg_1', 'generic', 'main', 'events', 'p1', 'POST', CAST('an old narwhal' AS BLOB), 1), "
        "('msg_2', 'generic', 'main', 'events', 'p2', 'POST', x'ff00fe', 2)"
    )
    conn.commit()
    conn.close()
    db = Database(path).open()
    try:
        assert indexed(db) == 1
        rows = db.read(
            "SELECT rowid FROM deliveries_search WHERE deliveries_search MATCH '\"narwhal\"'"
        )
        assert [r[0] for r in rows] == [1]
        assert scalar(db, "SELECT count(*) FROM deliveries WHERE event_type IS NULL") == 2
    finally:
        db.close()


def test_the_indexer_catches_up_a_backlog_in_batches(store: Path | DatabaseUrl) -> None:
    """More bodies than one batch wait: one catch-up indexes them all."""
    db = open_database(store).open()
    try:
        for n in range(600):
            add(db, n, b'{"word": "lemur %d"}' % n)

        async def catch_up() -> int:
            await db.aopen()
            try:
                return await Indexer(db).catch_up()
            finally:
                await db.aclose()

        assert asyncio.run(catch_up()) == 600
        assert scalar(db, "SELECT count(*) FROM deliveries WHERE searchable = 1") == 0
    finally:
        db.close()


# -- the time filter ------------------------------------------------------------------------


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


@pytest.mark.parametrize("form", [str, iso], ids=["unix", "iso"])
def test_since_and_until_bound_received_at(
    client: TestClient, admin_headers: Headers, box: Box, form: Any
) -> None:
    """?since= keeps what came at or after it, ?until= what came before it, in either form."""
    early = add(box.db, 1, at=T0)
    middle = add(box.db, 2, at=T0 + 100)
    late = add(box.db, 3, at=T0 + 200)

    def listed(**params: str) -> list[str]:
        answer = client.get("/admin/deliveries", params=params, headers=admin_headers)
        assert answer.status_code == 200, answer.text
        return [i["id"] for i in answer.json()["items"]]

    assert listed(since=form(T0 + 100)) == [late, middle]
    assert listed(until=form(T0 + 100)) == [early]
    assert listed(since=form(T0 + 50), until=form(T0 + 150)) == [middle]


def test_an_iso_time_without_an_offset_is_utc(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """2023-11-14T22:13:20 names T0 in UTC, whatever the machine's zone."""
    assert iso(T0) == "2023-11-14T22:13:20+00:00"
    add(box.db, 1, at=T0 - 1)
    later = add(box.db, 2, at=T0)
    items = client.get(
        "/admin/deliveries", params={"since": "2023-11-14T22:13:20"}, headers=admin_headers
    ).json()["items"]
    assert [i["id"] for i in items] == [later]


@pytest.mark.parametrize("value", ["yesterday", "nan", "inf", "-5", "2023-13-40"])
def test_a_time_that_is_neither_form_is_400(
    client: TestClient, admin_headers: Headers, value: str
) -> None:
    """A since that is not unix seconds or ISO 8601 is invalid_input, naming the parameter."""
    answer = client.get("/admin/deliveries", params={"since": value}, headers=admin_headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_input"
    assert "since" in answer.json()["error"]["message"]


# -- export ---------------------------------------------------------------------------------


def export(client: TestClient, headers: Headers, **params: str) -> Any:
    answer = client.get("/admin/deliveries/export", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer


def test_the_csv_export_is_the_list(client: TestClient, admin_headers: Headers, box: Box) -> None:
    """CSV with a header row whose rows are the list's items, newest first."""
    for n in range(3):
        add(box.db, n, conversation=f"chat-{n}", event_type="order.created")
    answer = export(client, admin_headers, format="csv")
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    items = client.get("/admin/deliveries", headers=admin_headers).json()["items"]
    assert [r["id"] for r in rows] == [i["id"] for i in items]
    for row, item in zip(rows, items, strict=True):
        assert row["conversation"] == item["conversation"]
        assert row["event_type"] == item["event_type"] == "order.created"
        assert float(row["received_at"]) == item["received_at"]
        assert int(row["attempts"]) == item["attempts"]
        assert row["delivered_at"] == ""  # None is an empty cell


def test_the_json_export_is_an_array_of_the_list_items(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """format=json answers one JSON array of the items the list shows."""
    for n in range(3):
        add(box.db, n)
    exported = export(client, admin_headers, format="json").json()
    assert exported == client.get("/admin/deliveries", headers=admin_headers).json()["items"]


def test_an_empty_export_is_still_a_file(client: TestClient, admin_headers: Headers) -> None:
    """Nothing selected: the CSV header alone, or an empty array."""
    assert export(client, admin_headers, format="json").json() == []
    csv_rows = list(csv.reader(io.StringIO(export(client, admin_headers, format="csv").text)))
    assert csv_rows == [list(listing.COLUMNS)]


def test_the_export_takes_the_list_filters(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """The same filters as the list: plugin, instance, time, words in the body, and a limit."""
    add(box.db, 1, b'{"text": "quokka"}', instance="a", at=T0)
    wanted = add(box.db, 2, b'{"text": "quokka"}', instance="a", at=T0 + 100)
    add(box.db, 3, b'{"text": "quokka"}', instance="b", at=T0 + 100)
    add(box.db, 4, b'{"text": "other"}', instance="a", at=T0 + 100)
    indexed(box.db)
    rows = export(
        client, admin_headers, format="json", instance="a", since=str(T0 + 50), q="quokka"
    ).json()
    assert [r["id"] for r in rows] == [wanted]
    assert len(export(client, admin_headers, format="json", limit="2").json()) == 2


def test_the_export_crosses_pages(client: TestClient, admin_headers: Headers, box: Box) -> None:
    """More rows than one read's page are all exported, each once."""
    ids = [add(box.db, n) for n in range(1203)]
    rows = export(client, admin_headers, format="json").json()
    assert [r["id"] for r in rows] == ids[::-1]


def test_a_cell_a_spreadsheet_would_run_is_quoted_as_text(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """A provider's value starting with = (a formula) gets a leading apostrophe in the CSV."""
    add(box.db, 1, conversation='=HYPERLINK("http://evil")')
    row = next(csv.DictReader(io.StringIO(export(client, admin_headers, format="csv").text)))
    assert row["conversation"] == """'=HYPERLINK("http://evil")"""


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"format": "xml"},
        {"format": "csv", "limit": "100001"},
        {"format": "csv", "limit": "0"},
        {"format": "csv", "since": "soon"},
        {"format": "csv", "state": "lost"},
    ],
    ids=["no-format", "xml", "limit-too-big", "limit-zero", "bad-since", "bad-state"],
)
def test_a_bad_export_request_is_400(
    client: TestClient, admin_headers: Headers, params: dict[str, str]
) -> None:
    """A missing or unknown format, a limit out of 1..100000 or a bad filter is invalid_input."""
    answer = client.get("/admin/deliveries/export", params=params, headers=admin_headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_input"


def test_the_export_needs_the_admin_token(client: TestClient) -> None:
    """Like every admin route, the export answers 401 without the token."""
    assert client.get("/admin/deliveries/export?format=csv").status_code == 401
