"""Schema versions: a fresh file, the 0.1.0 baseline, ordered steps, and a file too new to open."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from clirun import run
from conftest import ADMIN_TOKEN, file_of
from fake_target import FakeTarget
from live import free_port
from starlette.testclient import TestClient

from ingress_box.app import create_app
from ingress_box.config import Settings
from ingress_box.errors import SchemaTooNew
from ingress_box.signing import generate_outbound_secret
from ingress_box.store import Database
from ingress_box.store.migrations import MIGRATIONS, Migration, latest, statements

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_0_1_0 = Path(__file__).parent / "data" / "schema-0.1.0.sql"
HUEY_TABLES = {"kv", "schedule", "task", "counter"}  # huey's SqliteStorage, in the same file
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        conn.close()


def set_user_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


_TOKENS = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)


def _normalized(sql: str) -> str:
    """The statement without comments, quotes around names, or layout.

    ``ALTER TABLE ... ADD COLUMN`` splices its text in after the last column and ``RENAME``
    quotes the name, so a migrated table matches ``schema.sql`` once these are gone.
    """
    sql = _TOKENS.sub(lambda m: m.group() if m.group().startswith("'") else " ", sql)
    sql = re.sub(r'"(\w+)"', r"\1", sql)
    sql = " ".join(sql.split())
    return re.sub(r" ?([(),]) ?", r"\1", sql)


def schema_of(path: Path) -> dict[tuple[str, str], str | None]:
    """Every table, index and trigger of ours (not huey's), as normalized SQL."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE type IN ('table', 'index', 'trigger')"
        ).fetchall()
    finally:
        conn.close()
    return {
        (kind, name): None if sql is None else _normalized(sql)  # autoindexes have no SQL
        for kind, name, table, sql in rows
        if table not in HUEY_TABLES
    }


def make_0_1_0_file(path: Path) -> None:
    """A database as release 0.1.0 left it: its schema, and user_version still 0."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA_0_1_0.read_text(encoding="utf-8"))
    finally:
        conn.close()


def make_baseline_file(path: Path) -> None:
    """A file at version 1: the 0.1.0 schema, recorded as the baseline."""
    Database(path, migrations=()).open().close()
    assert user_version(path) == 1


def applied(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT version, note FROM steps ORDER BY id")]
    finally:
        conn.close()


def _third(conn: sqlite3.Connection) -> None:
    # Needs step 2's table and column: it only works when the steps run in order.
    conn.execute("INSERT INTO steps (version, note) VALUES (3, 'function')")


STEPS = [
    Migration(
        2,
        "steps",
        """
        CREATE TABLE steps (id INTEGER PRIMARY KEY, version INTEGER NOT NULL);
        -- a ';' in a comment, and one in a string, do not end a statement
        ALTER TABLE steps ADD COLUMN note TEXT NOT NULL DEFAULT 'a;b';
        INSERT INTO steps (version) VALUES (2);
        """,
    ),
    Migration(3, "function", _third),
]


# -- a fresh file and the baseline --------------------------------------------------------------


def test_a_fresh_file_gets_schema_sql_at_the_latest_version(tmp_path: Path) -> None:
    """An empty path gets every table of schema.sql and the latest version at once."""
    path = tmp_path / "fresh.db"
    Database(path).open().close()
    assert user_version(path) == latest(MIGRATIONS)
    assert {"meta", "instances", "deliveries", "outbox", "dead_letters", "attempts"} <= tables(path)


def test_a_fresh_file_with_injected_migrations_starts_at_their_latest(tmp_path: Path) -> None:
    """schema.sql stands for every migration: a fresh file runs none of them."""
    path = tmp_path / "fresh.db"
    Database(path, migrations=STEPS).open().close()
    assert user_version(path) == 3
    assert "steps" not in tables(path)


def test_a_0_1_0_file_is_recorded_as_version_1(tmp_path: Path) -> None:
    """A file with our tables and user_version 0 is the 0.1.0 baseline."""
    path = tmp_path / "old.db"
    make_0_1_0_file(path)
    assert user_version(path) == 0
    Database(path, migrations=()).open().close()
    assert user_version(path) == 1


def test_migration_numbers_must_follow_the_baseline() -> None:
    """A list with a gap or out of order is a programming error, not a schema."""
    first, second = STEPS
    with pytest.raises(ValueError, match="without gaps"):
        latest([second, first])
    with pytest.raises(ValueError, match="without gaps"):
        latest([second])
    assert latest(STEPS) == 3 and latest([]) == 1


def test_statements_split_at_semicolons_outside_strings_comments_and_triggers() -> None:
    """A trigger body and a ';' in a string or a comment stay inside their statement."""
    script = """
        CREATE TABLE t (x TEXT DEFAULT 'a;b'); -- one; comment
        CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
            UPDATE t SET x = 'c;d'; DELETE FROM t WHERE 0;
        END;
        INSERT INTO t VALUES ('e')
    """
    parts = [" ".join(s.split()) for s in statements(script)]
    assert parts[0] == "CREATE TABLE t (x TEXT DEFAULT 'a;b');"
    assert parts[1].startswith("-- one; comment CREATE TRIGGER") and parts[1].endswith("END;")
    assert parts[2] == "INSERT INTO t VALUES ('e')"
    assert len(parts) == 3


# -- steps in order, once each, one transaction each ------------------------------------------


def test_migrations_run_in_order_and_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each step runs after the one before it, and is logged at INFO."""
    path = tmp_path / "box.db"
    make_baseline_file(path)
    caplog.set_level(logging.INFO, logger="ingress_box.store.migrations")
    Database(path, migrations=STEPS).open().close()
    assert applied(path) == [(2, "a;b"), (3, "function")]
    assert user_version(path) == 3
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert logged == [
        f"{path}: applied migration 2 (steps)",
        f"{path}: applied migration 3 (function)",
    ]


def test_opening_again_applies_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file at the latest version is left alone, open after open."""
    path = tmp_path / "box.db"
    make_baseline_file(path)
    Database(path, migrations=STEPS).open().close()
    caplog.set_level(logging.INFO, logger="ingress_box.store.migrations")
    for _ in range(2):
        Database(path, migrations=STEPS).open().close()
    assert applied(path) == [(2, "a;b"), (3, "function")]
    assert user_version(path) == 3
    assert not [r for r in caplog.records if r.name == "ingress_box.store.migrations"]


def test_an_upgrade_stopped_halfway_goes_on_from_where_it_stopped(tmp_path: Path) -> None:
    """A program that knew only step 2 left the file at 2; the next one applies only step 3."""
    path = tmp_path / "box.db"
    make_baseline_file(path)
    Database(path, migrations=STEPS[:1]).open().close()
    assert user_version(path) == 2
    Database(path, migrations=STEPS).open().close()
    assert applied(path) == [(2, "a;b"), (3, "function")]


def test_a_failing_sql_step_leaves_the_file_at_the_version_before(tmp_path: Path) -> None:
    """Nothing of a step whose second statement fails holds, and its version is not recorded."""
    path = tmp_path / "box.db"
    make_baseline_file(path)
    broken = Migration(3, "broken", "CREATE TABLE half (x); INSERT INTO nowhere VALUES (1);")
    with pytest.raises(sqlite3.OperationalError, match="nowhere") as caught:
        Database(path, migrations=[STEPS[0], broken]).open()
    assert f"{path}: migration 3 (broken) failed" in caught.value.__notes__
    assert user_version(path) == 2
    assert "half" not in tables(path)
    assert applied(path) == [(2, "a;b")]  # step 2 committed on its own before step 3 began

    Database(path, migrations=STEPS).open().close()  # the fixed release gets on with it
    assert user_version(path) == 3
    assert applied(path) == [(2, "a;b"), (3, "function")]


def test_a_failing_function_step_leaves_the_file_at_the_version_before(tmp_path: Path) -> None:
    """A step that is a function is rolled back alike when it raises."""
    path = tmp_path / "box.db"
    make_baseline_file(path)

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO steps (version, note) VALUES (3, 'half')")
        raise RuntimeError("step 3 gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        Database(path, migrations=[STEPS[0], Migration(3, "half", half_done)]).open()
    assert user_version(path) == 2
    assert applied(path) == [(2, "a;b")]


def test_processes_opening_an_old_file_at_once_apply_each_step_once(tmp_path: Path) -> None:
    """serve and workers starting together on an old file: every step runs exactly once."""
    path = tmp_path / "box.db"
    make_baseline_file(path)
    go = tmp_path / "go"
    script = textwrap.dedent(
        """
        import os, sqlite3, sys, time
        from pathlib import Path
        from ingress_box.store import Database
        from ingress_box.store.migrations import Migration

        def step(version):
            def apply(conn):
                if version == 2:
                    conn.execute("CREATE TABLE steps (version INTEGER, pid INTEGER)")
                # Busy inside the transaction, so the others meet its lock.
                conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                             "WHERE x < 200000) SELECT count(*) FROM c").fetchone()
                conn.execute("INSERT INTO steps VALUES (?, ?)", (version, os.getpid()))
            return apply

        path, go, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
        ready.touch()
        deadline = time.monotonic() + 30
        while not go.exists():
            if time.monotonic() > deadline:
                sys.exit("never told to go")
            time.sleep(0.005)
        Database(path, busy_timeout=30,
                 migrations=[Migration(v, f"step{v}", step(v)) for v in (2, 3, 4)]).open().close()
        """
    )
    readies = [tmp_path / f"ready{i}" for i in range(3)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), str(go), str(ready)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready in readies
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in readies):
            assert time.monotonic() < deadline, "the processes did not start"
            assert all(p.poll() is None for p in processes), "a process died early"
            time.sleep(0.01)
        go.touch()
        errors = [p.communicate(timeout=60)[1] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in processes] == [0, 0, 0], errors
    conn = sqlite3.connect(path)
    versions = [r[0] for r in conn.execute("SELECT version FROM steps ORDER BY rowid")]
    conn.close()
    assert versions == [2, 3, 4]
    assert user_version(path) == 4


# -- a file from a newer release --------------------------------------------------------------


def _too_new(tmp_path: Path) -> Path:
    path = tmp_path / "new.db"
    Database(path).open().close()
    set_user_version(path, latest(MIGRATIONS) + 4)
    return path


def _refusal(path: Path) -> str:
    known = latest(MIGRATIONS)
    return f"{path} has schema version {known + 4}; this ingress-box knows up to {known}: " + (
        "upgrade ingress-box"
    )


def test_a_newer_file_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """A file from a later release is not opened, and not touched."""
    path = _too_new(tmp_path)
    before = schema_of(path)
    with pytest.raises(SchemaTooNew) as caught:
        Database(path).open()
    assert str(caught.value) == _refusal(path)
    assert (caught.value.version, caught.value.known) == (
        latest(MIGRATIONS) + 4,
        latest(MIGRATIONS),
    )
    assert user_version(path) == latest(MIGRATIONS) + 4
    assert schema_of(path) == before


def test_an_empty_file_marked_newer_gets_no_schema(tmp_path: Path) -> None:
    """The version is checked before an empty-looking file is filled in."""
    path = tmp_path / "new.db"
    set_user_version(path, 9)
    with pytest.raises(SchemaTooNew):
        Database(path, migrations=STEPS).open()
    assert tables(path) == set()


def test_stats_on_a_newer_file_fails_in_one_line(tmp_path: Path) -> None:
    """ingress-box stats says why in one line and exits 1."""
    path = _too_new(tmp_path)
    result = run("stats", "--db", str(path))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {_refusal(path)}"


def test_serve_on_a_newer_file_fails_in_one_line(tmp_path: Path) -> None:
    """ingress-box serve, as a real process, refuses to start with one line on stderr."""
    path = _too_new(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingress_box",
            "serve",
            "--db",
            str(path),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**env, "INGRESS_BOX_ADMIN_TOKEN": ADMIN_TOKEN},
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"Error: {_refusal(path)}"
    assert result.stdout == ""


# -- schema.sql and the migrations agree ------------------------------------------------------


def test_the_baseline_upgraded_through_every_migration_is_schema_sql(tmp_path: Path) -> None:
    """A 0.1.0 file brought up to date has exactly the schema a fresh file gets."""
    old, fresh = tmp_path / "old.db", tmp_path / "fresh.db"
    make_0_1_0_file(old)
    Database(old).open().close()
    Database(fresh).open().close()
    assert schema_of(old) == schema_of(fresh)
    assert user_version(old) == user_version(fresh) == latest(MIGRATIONS)


def test_the_schema_comparison_sees_a_forgotten_column(tmp_path: Path) -> None:
    """A migration that adds a column schema.sql lacks makes the two schemas differ."""
    old, fresh = tmp_path / "old.db", tmp_path / "fresh.db"
    make_0_1_0_file(old)
    column = Migration(
        latest(MIGRATIONS) + 1, "forgotten", "ALTER TABLE attempts ADD COLUMN forgotten TEXT"
    )
    Database(old, migrations=[*MIGRATIONS, column]).open().close()
    Database(fresh).open().close()
    assert schema_of(old) != schema_of(fresh)
    differ = {k for k in schema_of(old) if schema_of(old)[k] != schema_of(fresh).get(k)}
    assert differ == {("table", "attempts")}


def test_an_added_column_matches_schema_sql_listing_it_last(tmp_path: Path) -> None:
    """ALTER TABLE ... ADD COLUMN and a CREATE TABLE with the column last compare equal."""
    altered, created = tmp_path / "altered.db", tmp_path / "created.db"
    conn = sqlite3.connect(altered)
    conn.execute("CREATE TABLE t (\n  a TEXT,   -- why a\n  PRIMARY KEY (a)\n) WITHOUT ROWID")
    conn.execute("ALTER TABLE t ADD COLUMN b TEXT")
    conn.close()
    conn = sqlite3.connect(created)
    conn.execute("CREATE TABLE t (a TEXT, b TEXT, PRIMARY KEY (a)) WITHOUT ROWID")
    conn.close()
    assert schema_of(altered) == schema_of(created)


# -- the 0.1.0 upgrade, through the real app -------------------------------------------------


def fill_0_1_0_file(path: Path, target_url: str) -> dict[str, str]:
    """One of everything, written as 0.1.0 wrote it; returns the ids to look for."""
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO instances (plugin_id, instance_id, target_url, secret, outbound_secret, "
        "created_at, updated_at) VALUES ('generic', 'main', ?, 's3cret-value', ?, ?, ?)",
        (target_url, generate_outbound_secret(), now - 3600, now - 3600),
    )
    delivery = (
        "INSERT INTO deliveries (seq, id, plugin_id, instance_id, route, provider_delivery_id, "
        "method, content_type, body, state, attempts, last_error, received_at, delivered_at) "
        "VALUES (?, ?, 'generic', 'main', 'events', ?, 'POST', 'application/json', "
        "?, ?, ?, ?, ?, ?)"
    )
    conn.execute(delivery, (1, "msg_done", "p-1", None, "delivered", 1, None, now - 600, now - 599))
    conn.execute(
        "INSERT INTO attempts (delivery_seq, attempt, started_at, duration_ms, outcome, "
        "status_code) VALUES (1, 1, ?, 12.5, 'delivered', 200)",
        (now - 599,),
    )
    conn.execute(
        delivery, (2, "msg_dead", "p-2", b'{"n": 2}', "dead", 5, "HTTP 500", now - 500, None)
    )
    conn.execute(
        "INSERT INTO dead_letters (id, delivery_seq, plugin_id, instance_id, attempts, "
        "last_error, created_at) VALUES ('dlq_old', 2, 'generic', 'main', 5, 'HTTP 500', ?)",
        (now - 400,),
    )
    conn.execute(
        delivery, (3, "msg_pending", "p-3", b'{"n": 3}', "pending", 0, None, now - 60, None)
    )
    conn.execute(
        "INSERT INTO outbox (delivery_seq, lane, available_at) VALUES (3, NULL, ?)", (now - 60,)
    )
    conn.execute(
        "INSERT INTO conversation_mappings (session, chat, plugin_id, instance_id, "
        "provider_conversation_id, state, created_at, updated_at) "
        "VALUES ('default', '123@c.us', 'generic', 'main', 'conv-1', 'human', ?, ?)",
        (now - 300, now - 300),
    )
    conn.execute("COMMIT")
    conn.close()
    return {"done": "msg_done", "dead": "msg_dead", "pending": "msg_pending", "dlq": "dlq_old"}


def test_a_0_1_0_database_keeps_every_row_and_delivers_after_the_upgrade(
    settings: Settings, target: FakeTarget, tmp_path: Path
) -> None:
    """The real app on a 0.1.0 file: every row is there, the pending one is delivered, and the
    upgraded file's schema is a fresh file's."""
    make_0_1_0_file(file_of(settings.db_path))
    ids = fill_0_1_0_file(file_of(settings.db_path), target.url)

    with TestClient(create_app(settings)) as client:
        listed = client.get("/admin/instances", headers=AUTH).json()["items"]
        assert [(i["plugin"], i["instance"]) for i in listed] == [("generic", "main")]

        dead_letters = client.get("/admin/dlq", headers=AUTH).json()["items"]
        assert [(d["id"], d["delivery"], d["last_error"]) for d in dead_letters] == [
            (ids["dlq"], ids["dead"], "HTTP 500")
        ]

        mappings = client.get(
            "/admin/mappings",
            params={"plugin": "generic", "instance": "main", "conversation": "conv-1"},
            headers=AUTH,
        ).json()["items"]
        assert [(m["session"], m["chat"], m["state"]) for m in mappings] == [
            ("default", "123@c.us", "human")
        ]

        received = target.wait_for(1)
        assert received[0].body == b'{"n": 3}'
        assert received[0].headers["webhook-id"] == ids["pending"]
        deadline = time.monotonic() + 15
        while True:
            states = {
                d["id"]: d["state"]
                for d in client.get("/admin/deliveries", headers=AUTH).json()["items"]
            }
            if states.get(ids["pending"]) == "delivered":
                break
            assert time.monotonic() < deadline, f"the pending delivery stayed {states}"
            time.sleep(0.02)
        assert states == {
            ids["done"]: "delivered",
            ids["dead"]: "dead",
            ids["pending"]: "delivered",
        }

    fresh = tmp_path / "fresh.db"
    Database(fresh).open().close()
    assert schema_of(file_of(settings.db_path)) == schema_of(fresh)
    assert user_version(file_of(settings.db_path)) == user_version(fresh) == latest(MIGRATIONS)
    assert len(target.received) == 1
