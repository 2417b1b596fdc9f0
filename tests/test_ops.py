"""Operator commands on a real file: backup (under load), stats, doctor, tail, prune, progress."""

from __future__ import annotations

import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from clirun import ok, run
from conftest import T0, MakeDeadLetters
from live import SECRET, add_instance, running_box
from signers import sign_generic
from waiting import eventually

from ingress_box import backup
from ingress_box.config import DatabaseUrl, Settings
from ingress_box.store import Database, tail
from ingress_box.store.dead_letters import MAX_REDRIVE_BATCH
from ingress_box.store.deliveries import NewDelivery, accept
from ingress_box.store.outbox import Outcome, claim, record_outcome

ROOT = Path(__file__).resolve().parent.parent
_numbers = itertools.count(1)


def add_instance_cli(db_path: Path | DatabaseUrl, plugin: str, instance: str, *args: str) -> None:
    ok("instances", "add", plugin, instance, "--db", str(db_path), "--json", *args)


def deliver(
    db: Database,
    *,
    conversation: str | None = None,
    received_at: float | None = None,
    plugin: str = "generic",
    instance: str = "main",
) -> int:
    """Accept one delivery (optionally in a conversation lane); returns its seq."""
    n = next(_numbers)
    new = NewDelivery(
        id=f"msg_ops{n:06d}",
        plugin_id=plugin,
        instance_id=instance,
        route="events",
        provider_delivery_id=f"ops-{n}",
        conversation=conversation,
        method="POST",
        subpath="",
        content_type="application/json",
        headers="{}",
        body=b'{"n": %d}' % n,
        received_at=time.time() if received_at is None else received_at,
    )

    def op(conn: sqlite3.Connection) -> int:
        assert accept(conn, new)
        return int(conn.execute("SELECT seq FROM deliveries WHERE id = ?", (new.id,)).fetchone()[0])

    return db.write(op)


def attempt(
    db: Database,
    seq: int,
    outcome: str,
    *,
    strict: bool = False,
    status_code: int | None = 500,
    now: float | None = None,
) -> None:
    """Claim ``seq`` as the worker would and settle it with ``outcome``."""
    at = time.time() if now is None else now

    def op(conn: sqlite3.Connection) -> None:
        rows = [r for r in claim("ops-tests", at, 60, 1_000_000)(conn) if r.seq == seq]
        assert rows, f"seq {seq} was not claimable"
        record_outcome(
            Outcome(
                seq=seq,
                owner="ops-tests",
                outcome=outcome,
                started_at=at,
                duration_ms=12.0,
                status_code=status_code,
                error=None if outcome == "delivered" else "HTTP 500",
                next_attempt_at=at,
                dead_letter_id=f"dlq_ops{seq}",
                strict=strict,
            ),
            at,
        )(conn)
        # Others claimed along the way go back untouched.
        conn.execute(
            "UPDATE outbox SET lease_until = NULL, lease_owner = NULL "
            "WHERE lease_owner = 'ops-tests'"
        )

    db.write(op)


def doctor_json(
    db_path: Path | DatabaseUrl, *args: str, env: dict[str, str] | None = None, exit_code: int = 0
) -> dict[str, dict[str, str]]:
    result = run("doctor", "--db", str(db_path), "--json", *args, env=env)
    assert result.exit_code == exit_code, result.output
    data = json.loads(result.stdout)
    return {c["name"]: c for c in data["checks"]}


# -- backup ----------------------------------------------------------------------------------


def _prefill(db: Database, rows: int) -> None:
    body = b"x" * 1024

    def op(conn: sqlite3.Connection) -> None:
        for _ in range(1000):
            n = next(_numbers)
            accept(
                conn,
                NewDelivery(
                    id=f"msg_fill{n:07d}",
                    plugin_id="generic",
                    instance_id="main",
                    route="events",
                    provider_delivery_id=f"fill-{n}",
                    conversation=None,
                    method="POST",
                    subpath="",
                    content_type="application/json",
                    headers="{}",
                    body=body,
                    received_at=time.time(),
                ),
            )

    for _ in range(rows // 1000):
        db.write(op)


def test_backup_under_load_holds_every_delivery_acked_before_it_started(
    settings: Settings, tmp_path: Path
) -> None:
    """A backup taken while webhooks keep arriving is intact and has every earlier ack."""
    acked: list[tuple[float, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    with running_box(settings, run_worker=False) as live:
        add_instance(live.box)
        _prefill(live.box.db, 20_000)  # ~25 MB: the copy takes several backup steps

        def post(worker: int) -> None:
            with httpx.Client(base_url=live.url, timeout=10) as http:
                for n in itertools.count():
                    if stop.is_set():
                        return
                    body = json.dumps({"worker": worker, "n": n}).encode()
                    answer = http.post(
                        "/ingress/generic/main/events",
                        content=body,
                        headers={
                            "content-type": "application/json",
                            **sign_generic(SECRET, body, msg_id=f"load-{worker}-{n}"),
                        },
                    )
                    assert answer.status_code == 202, answer.text
                    with lock:
                        acked.append((time.monotonic(), answer.json()["id"]))

        posters = [threading.Thread(target=post, args=(w,), daemon=True) for w in range(4)]
        for thread in posters:
            thread.start()
        eventually(lambda: len(acked) >= 200, 60, "200 acked webhooks before the backup")
        with lock:
            before = {delivery_id for _, delivery_id in acked}
        started = time.monotonic()
        target = tmp_path / "backup.db"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ingress_box",
                "backup",
                str(target),
                "--db",
                str(settings.db_path),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        finished = time.monotonic()
        stop.set()
        for thread in posters:
            thread.join(timeout=10)

    assert done.returncode == 0, done.stderr
    during = sum(1 for at, _ in acked if started <= at <= finished)
    assert during > 0, "nothing was committed while the backup ran"
    conn = sqlite3.connect(str(target))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {r[0] for r in conn.execute("SELECT id FROM deliveries")}
    finally:
        conn.close()
    assert before <= stored
    report = json.loads(done.stdout)
    assert report["deliveries"] == len(stored) >= 20_000 + len(before)


def test_backup_is_one_file_that_serve_can_open(
    db_path: Path | DatabaseUrl, db: Database, tmp_path: Path
) -> None:
    """The backup needs no -wal beside it and opens as a box database."""
    deliver(db)
    target = tmp_path / "copy.db"
    ok("backup", str(target), "--db", str(db_path))
    assert not Path(f"{target}-wal").exists()
    copy = sqlite3.connect(str(target))
    try:
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert copy.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
    finally:
        copy.close()


def test_backup_refuses_to_overwrite_without_force(
    db_path: Path | DatabaseUrl, db: Database, tmp_path: Path
) -> None:
    """An existing PATH is bad input unless --force is given."""
    target = tmp_path / "copy.db"
    target.write_text("precious")
    result = run("backup", str(target), "--db", str(db_path))
    assert result.exit_code == 2 and "--force" in result.stderr
    assert target.read_text() == "precious"
    ok("backup", str(target), "--db", str(db_path), "--force")
    assert target.read_bytes().startswith(b"SQLite format 3")


def test_backup_into_a_folder_writes_a_dated_file(
    db_path: Path | DatabaseUrl, db: Database, tmp_path: Path
) -> None:
    """A folder as PATH gets an ingress-box-<UTC time>.db inside it."""
    folder = tmp_path / "backups"
    folder.mkdir()
    data = json.loads(ok("backup", str(folder), "--db", str(db_path), "--json").stdout)
    assert Path(data["path"]).parent == folder and Path(data["path"]).exists()
    assert Path(data["path"]).name.startswith("ingress-box-")


def test_backup_reports_progress_up_to_every_page(db: Database, tmp_path: Path) -> None:
    """The progress callback ends at done == total pages."""
    _prefill(db, 5000)  # ~1,900 pages: two steps or more
    seen: list[tuple[int, int]] = []
    report = backup.backup(db, tmp_path / "copy.db", lambda done, total: seen.append((done, total)))
    assert len(seen) > 1 and seen[-1] == (report.pages, report.pages)


def test_backup_progress_bar_goes_to_stderr(
    db_path: Path | DatabaseUrl, db: Database, tmp_path: Path
) -> None:
    """--progress draws on stderr, so --json on stdout still parses."""
    result = ok("backup", str(tmp_path / "copy.db"), "--db", str(db_path), "--json", "--progress")
    assert "backing up" in result.stderr and json.loads(result.stdout)["deliveries"] == 0


# -- stats -----------------------------------------------------------------------------------


@pytest.fixture
def busy_file(
    db_path: Path | DatabaseUrl, db: Database, make_dead_letters: MakeDeadLetters
) -> Path | DatabaseUrl:
    """Two pending, one delivered, two dead (open), instances: one bare, one twilio."""
    make_dead_letters(db, 2)
    deliver(db)
    deliver(db, conversation="c1")
    attempt(db, deliver(db), "delivered", status_code=200)
    add_instance_cli(db_path, "generic", "bare")
    add_instance_cli(
        db_path, "twilio", "sms", "--target-url", "https://bot.example/in", "--secret", "auth-token"
    )
    return db_path


@pytest.mark.both_stores
def test_stats_json_counts_everything(busy_file: Path | DatabaseUrl) -> None:
    """stats --json has the counts of deliveries, outbox, attempts, dead letters, instances."""
    data = json.loads(ok("stats", "--db", str(busy_file), "--json").stdout)
    assert data["deliveries"] == {"pending": 2, "delivered": 1, "dead": 2, "total": 5}
    assert data["outbox"]["waiting"] == 2 and data["outbox"]["lanes"] == 1
    assert data["outbox"]["oldest_pending_age_seconds"] < 60
    assert data["attempts_last_hour"] == {"delivered": 1, "retry": 0, "dead": 0}
    assert data["dead_letters"] == {"open": 2, "redriven": 0}
    assert data["instances"] == {"total": 2, "enabled": 2}
    assert data["received"]["last_hour"] == 3  # the dead ones were received at T0, long ago
    assert data["files"]["database_bytes"] > 0


@pytest.mark.both_stores
def test_stats_prints_one_line_per_section(busy_file: Path | DatabaseUrl) -> None:
    """stats prints readable sections with the same figures."""
    lines = ok("stats", "--db", str(busy_file)).stdout.splitlines()
    assert lines[0].split() == [
        "deliveries:",
        "pending",
        "2",
        "delivered",
        "1",
        "dead",
        "2",
        "total",
        "5",
    ]
    assert any(line.startswith("dead letters:") and "open 2" in line for line in lines)
    assert any(line.startswith("files:") and "MiB" in line for line in lines)


# -- doctor ----------------------------------------------------------------------------------


@pytest.mark.both_stores
def test_doctor_on_a_healthy_file_exits_0(db_path: Path | DatabaseUrl, db: Database) -> None:
    """Every check is ok on a file with a targeted instance and a fresh delivery."""
    add_instance_cli(db_path, "generic", "main", "--target-url", "https://bot.example/in")
    deliver(db)
    result = ok("doctor", "--db", str(db_path))
    assert all(line.startswith("ok ") for line in result.stdout.splitlines()), result.stdout
    if isinstance(db_path, Path):
        assert "integrity" in result.stdout and "quick_check: ok" in result.stdout
    else:  # the database's check instead of the file's
        assert "integrity" not in result.stdout and "wal" not in result.stdout
        assert re.search(
            r"^ok +database +PostgreSQL [\d.]+.*, schema version \d+$", result.stdout, re.M
        )


@pytest.mark.both_stores
def test_doctor_fails_on_an_instance_without_target(busy_file: Path | DatabaseUrl) -> None:
    """A forward instance without target_url is a fail: exit 1, named in the detail."""
    checks = doctor_json(busy_file, exit_code=1)
    assert checks["targets"]["status"] == "fail"
    assert "generic/bare" in checks["targets"]["detail"]


@pytest.mark.both_stores
def test_doctor_warns_about_twilio_without_public_url(
    db_path: Path | DatabaseUrl, db: Database
) -> None:
    """A Twilio instance without a public URL is a warning, which does not fail the run."""
    add_instance_cli(
        db_path, "twilio", "sms", "--target-url", "https://bot.example/in", "--secret", "auth-token"
    )
    checks = doctor_json(db_path)
    assert (
        checks["public_url"]["status"] == "warn" and "twilio/sms" in checks["public_url"]["detail"]
    )


@pytest.mark.both_stores
def test_doctor_accepts_the_public_url_setting(db_path: Path | DatabaseUrl, db: Database) -> None:
    """INGRESS_BOX_PUBLIC_URL clears the Twilio warning."""
    add_instance_cli(
        db_path, "twilio", "sms", "--target-url", "https://bot.example/in", "--secret", "auth-token"
    )
    checks = doctor_json(db_path, env={"INGRESS_BOX_PUBLIC_URL": "https://hooks.example.com"})
    assert checks["public_url"]["status"] == "ok"


@pytest.mark.both_stores
def test_doctor_accepts_a_public_url_in_the_instance_config(
    db_path: Path | DatabaseUrl, db: Database
) -> None:
    """A public_url in the Twilio instance's config clears the warning too."""
    add_instance_cli(
        db_path,
        "twilio",
        "sms",
        "--target-url",
        "https://bot.example/in",
        "--secret",
        "auth-token",
        "--config",
        '{"public_url": "https://hooks.example.com"}',
    )
    assert doctor_json(db_path)["public_url"]["status"] == "ok"


@pytest.mark.both_stores
def test_doctor_fails_on_a_parked_lane(db_path: Path | DatabaseUrl, db: Database) -> None:
    """A strict lane whose dead head is parked fails the lanes check."""
    head = deliver(db, conversation="c1")
    deliver(db, conversation="c1")
    attempt(db, head, "dead", strict=True)
    checks = doctor_json(db_path, exit_code=1)
    assert checks["lanes"]["status"] == "fail"
    assert "parked" in checks["lanes"]["detail"] and "2 waiting" in checks["lanes"]["detail"]


@pytest.mark.both_stores
def test_doctor_warns_on_a_lane_head_with_many_attempts(
    db_path: Path | DatabaseUrl, db: Database
) -> None:
    """A lane head retried --stuck-attempts times is a warning."""
    head = deliver(db, conversation="c1")
    for _ in range(3):
        attempt(db, head, "retry")
    checks = doctor_json(db_path, "--stuck-attempts", "3")
    assert checks["lanes"]["status"] == "warn" and "3 attempts" in checks["lanes"]["detail"]


@pytest.mark.both_stores
def test_doctor_warns_on_old_pending_events(db_path: Path | DatabaseUrl, db: Database) -> None:
    """A pending event older than --stuck-minutes warns, as oldest_pending and in its lane."""
    deliver(db, conversation="c1", received_at=time.time() - 3600)
    checks = doctor_json(db_path, "--stuck-minutes", "30")
    assert checks["oldest_pending"]["status"] == "warn"
    assert checks["oldest_pending"]["detail"].startswith("360")
    assert checks["lanes"]["status"] == "warn"


@pytest.mark.both_stores
def test_doctor_counts_open_dead_letters(
    db_path: Path | DatabaseUrl, db: Database, make_dead_letters: MakeDeadLetters
) -> None:
    """Open dead letters are a warning with their number."""
    make_dead_letters(db, 2)
    assert doctor_json(db_path)["dead_letters"] == {
        "name": "dead_letters",
        "status": "warn",
        "detail": "2 open",
    }


def test_doctor_fails_on_a_corrupt_file(db_path: Path | DatabaseUrl, db: Database) -> None:
    """A damaged index fails the integrity check."""
    for _ in range(50):
        deliver(db)
    db.close()
    conn = sqlite3.connect(str(db_path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'deliveries_state'"
    ).fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db_path, "r+b") as f:  # scribble over the index's root page
        f.seek((root - 1) * page_size + 100)
        f.write(b"\xff" * 200)
    checks = doctor_json(db_path, "--full", exit_code=1)
    assert checks["integrity"]["status"] == "fail"


# -- tail ------------------------------------------------------------------------------------


@pytest.mark.both_stores
def test_tail_no_follow_prints_receipts_and_attempts(
    db_path: Path | DatabaseUrl, db: Database
) -> None:
    """tail --no-follow prints each receipt and attempt of the window, then exits."""
    seq = deliver(db, conversation="c9")
    attempt(db, seq, "retry")
    attempt(db, seq, "delivered", status_code=200)
    lines = ok("tail", "--db", str(db_path), "--no-follow").stdout.splitlines()
    assert len(lines) == 3
    assert "received" in lines[0] and "generic/main/events" in lines[0] and "c9" in lines[0]
    assert "retry" in lines[1] and "attempt 1" in lines[1] and "HTTP 500" in lines[1]
    assert "delivered" in lines[2] and "attempt 2" in lines[2] and "HTTP 200" in lines[2]


@pytest.mark.both_stores
def test_tail_json_prints_one_object_per_line(db_path: Path | DatabaseUrl, db: Database) -> None:
    """tail --json prints JSON lines with the delivery id and outcome."""
    seq = deliver(db)
    attempt(db, seq, "dead")
    events = [
        json.loads(line)
        for line in ok("tail", "--db", str(db_path), "--no-follow", "--json").stdout.splitlines()
    ]
    assert [e["event"] for e in events] == ["received", "attempt"]
    assert events[1]["outcome"] == "dead" and events[0]["id"] == events[1]["id"]


@pytest.mark.both_stores
def test_tail_since_leaves_out_older_events(db_path: Path | DatabaseUrl, db: Database) -> None:
    """--since SECONDS starts at that age: older receipts and attempts are not printed."""
    old = deliver(db, received_at=time.time() - 7200)
    attempt(db, old, "delivered", now=time.time() - 7000)
    fresh = deliver(db)
    events = [
        json.loads(line)
        for line in ok(
            "tail", "--db", str(db_path), "--no-follow", "--json", "--since", "600"
        ).stdout.splitlines()
    ]
    fresh_id = db.read_one("SELECT id FROM deliveries WHERE seq = ?", (fresh,))
    assert fresh_id is not None
    assert [(e["event"], e["id"]) for e in events] == [("received", fresh_id[0])]


def test_tail_follow_yields_what_is_committed_later(db: Database) -> None:
    """Following, a delivery committed after the tail started is printed at the next poll."""
    later: list[int] = []

    def sleep(seconds: float) -> None:
        assert seconds == tail.POLL_SECONDS
        if later:
            raise KeyboardInterrupt  # the second idle poll: enough
        later.append(deliver(db))

    with pytest.raises(KeyboardInterrupt):
        events: list[dict[str, Any]] = []
        for event in tail.tail(db, time.time() - 60, sleep=sleep):
            events.append(event.to_json())
    assert [e["event"] for e in events] == ["received"]


# -- prune and redrive progress --------------------------------------------------------------


@pytest.mark.both_stores
def test_prune_drops_what_retention_allows(db_path: Path | DatabaseUrl, db: Database) -> None:
    """prune removes delivered events past the dedup window and keeps pending ones."""
    for _ in range(3):
        attempt(db, deliver(db, received_at=T0), "delivered", status_code=200, now=T0)
    deliver(db, received_at=T0)
    report = json.loads(ok("prune", "--db", str(db_path), "--json", "--progress").stdout)
    assert report["delivered_pruned"] == 3 and report["payloads_dropped"] == 3
    assert (
        json.loads(ok("stats", "--db", str(db_path), "--json").stdout)["deliveries"]["total"] == 1
    )


@pytest.mark.both_stores
def test_prune_progress_bar_goes_to_stderr(db_path: Path | DatabaseUrl, db: Database) -> None:
    """prune --progress labels its bar on stderr when there is something to prune."""
    attempt(db, deliver(db, received_at=T0), "delivered", status_code=200, now=T0)
    result = ok("prune", "--db", str(db_path), "--progress")
    assert "pruning" in result.stderr and "delivered pruned: 1" in result.stdout


@pytest.mark.both_stores
def test_dlq_redrive_progress_keeps_json_clean(
    db_path: Path | DatabaseUrl, db: Database, make_dead_letters: MakeDeadLetters
) -> None:
    """A redrive over several batches draws its bar on stderr; stdout is still the JSON."""
    make_dead_letters(db, MAX_REDRIVE_BATCH + 5)
    result = ok("dlq", "redrive", "--db", str(db_path), "--json", "--progress")
    assert json.loads(result.stdout) == {"redriven": MAX_REDRIVE_BATCH + 5, "remaining": 0}
    assert "redriving" in result.stderr


@pytest.mark.both_stores
def test_dlq_redrive_draws_no_bar_by_default_off_a_terminal(
    db_path: Path | DatabaseUrl, db: Database, make_dead_letters: MakeDeadLetters
) -> None:
    """Without --progress and without a terminal, nothing is drawn."""
    make_dead_letters(db, MAX_REDRIVE_BATCH + 5)
    assert ok("dlq", "redrive", "--db", str(db_path)).stderr == ""


# -- on a PostgreSQL URL (no server needed) --------------------------------------------------


def test_backup_of_a_postgresql_database_points_to_pg_dump(tmp_path: Path) -> None:
    """backup copies a SQLite file; given a URL it refuses, naming pg_dump, and writes nothing."""
    result = run("backup", str(tmp_path / "copy.db"), "--db", "postgresql://box:pw@127.0.0.1:1/box")
    assert result.exit_code == 2 and "pg_dump (see the README)" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["doctor", "stats", "prune", "deliveries list"])
def test_an_unreachable_database_is_one_line_without_its_password(command: str) -> None:
    """A server that does not answer: exit 1, one line naming the database, no password."""
    url = "postgresql://box:hunter2@127.0.0.1:1/box?connect_timeout=2"
    result = run(*command.split(), "--db", url)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: cannot open postgresql://box:***@127.0.0.1:1/box")
    assert "hunter2" not in result.output and result.output.count("\n") == 1
