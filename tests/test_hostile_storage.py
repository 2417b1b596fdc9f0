"""A failing disk, a damaged or locked file, a careless path: /readyz tells the truth, a webhook
learns of a locked file within the busy timeout, and every command fails in one line."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN
from live import SECRET, add_instance, free_port, insert_instance, running_box
from signers import sign_generic
from waiting import eventually

from ingress_box.config import load_settings
from ingress_box.logs import RepeatFilter
from ingress_box.store import Database

PAGE = 4096


def _env(db_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
    return env | {"INGRESS_BOX_DB": str(db_path), "INGRESS_BOX_ADMIN_TOKEN": ADMIN_TOKEN, **extra}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingress_box", *args],
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
    )


def _box_file(path: Path) -> Path:
    """A box's database file with the ``generic/main`` instance, closed (so a test can do to
    it what a disk would)."""
    db = Database(path).open()
    try:
        # the target is never reached: no worker runs
        insert_instance(db, target_url="http://127.0.0.1:9/hook")
    finally:
        db.close()
    return path


def _damage_deliveries(path: Path) -> None:
    """Overwrite the page in the middle of the file where the deliveries table starts."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'deliveries'"
        ).fetchone()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    finally:
        conn.close()
    assert 1 < root < pages  # not the header page, not the end: the middle
    with path.open("r+b") as f:
        f.seek((root - 1) * PAGE)
        f.write(os.urandom(PAGE))


def _post_generic(url: str, msg_id: str, size: int = 64, timeout: float = 30) -> httpx.Response:
    body = json.dumps({"id": msg_id, "pad": "x" * size}).encode()
    headers = {"content-type": "application/json", **sign_generic(SECRET, body, msg_id=msg_id)}
    return httpx.post(
        f"{url}/ingress/generic/main/events", content=body, headers=headers, timeout=timeout
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a command that failed as it should: one line, no traceback."""
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- /readyz -----------------------------------------------------------------------------------


def test_readyz_is_503_once_a_write_finds_the_file_damaged(tmp_path: Path) -> None:
    """A file damaged in the middle opens, but its writes fail: /readyz says so after the first
    failed write (its own probe touches other pages), instead of 200 while nothing is stored."""
    path = _box_file(tmp_path / "box.db")
    _damage_deliveries(path)
    settings = load_settings({}, db_path=path, admin_token=ADMIN_TOKEN)
    with running_box(settings, run_worker=False) as live:
        assert _post_generic(live.url, "d1").status_code != 202
        answer = httpx.get(f"{live.url}/readyz", timeout=30)
    assert answer.status_code == 503
    assert any(p.startswith("database damaged") for p in answer.json()["problems"])


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
def test_readyz_is_503_when_a_delivery_sized_commit_passes_the_file_size_limit(
    tmp_path: Path,
) -> None:
    """With the file size limit reached, a small write may still fit but a webhook does not:
    /readyz commits a delivery-sized row, so it answers 503 too."""
    path = _box_file(tmp_path / "box.db")
    port = free_port()
    env = _env(path, INGRESS_BOX_PORT=str(port), INGRESS_BOX_RUN_WORKER="false")
    process = subprocess.Popen(
        [sys.executable, "-m", "ingress_box", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: _status(url + "/readyz") == 200, 30, "serve to be ready")
        for n in range(4):  # a log with room for 100 KiB of pages
            assert _post_generic(url, f"big-{n}", size=24 * 1024).status_code == 202
        conn = sqlite3.connect(path)
        try:  # the next write starts the log from its beginning again
            assert conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] == 0
        finally:
            conn.close()
        # Room for three pages from there: a small write fits, a webhook of 24 KiB does not.
        limit = 32 + 3 * (PAGE + 24)
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, limit))
        assert _status(url + "/readyz") == 503
        assert _post_generic(url, "big-late", size=24 * 1024).status_code == 503
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=30).status_code
    except httpx.HTTPError:
        return 0


# -- a locked file -----------------------------------------------------------------------------


@pytest.fixture
def blocker(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "box.db", isolation_level=None)
    yield conn
    conn.close()


def test_a_webhook_gets_503_within_the_busy_timeout_though_another_write_waits_ahead(
    tmp_path: Path, blocker: sqlite3.Connection
) -> None:
    """While another process holds the write lock, a webhook queued behind another blocked write
    still gets its 503 with Retry-After within BUSY_TIMEOUT + 1 s of its arrival."""
    busy = 2.0
    settings = load_settings(
        {}, db_path=tmp_path / "box.db", admin_token=ADMIN_TOKEN, busy_timeout_seconds=busy
    )
    with running_box(settings, run_worker=False) as live:
        add_instance(live.box)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            ahead = live.box.db.submit(lambda conn: None)  # e.g. a /readyz probe
            eventually(lambda: live.box.db.queued() == 0, 5, "the writer to take the probe")
            arrived = time.monotonic()
            answer = _post_generic(live.url, "locked-1")
            took = time.monotonic() - arrived
        finally:
            blocker.execute("ROLLBACK")
        assert ahead.exception(timeout=10) is not None  # it failed on the lock, as it should
    assert answer.status_code == 503 and "retry-after" in answer.headers
    assert took <= busy + 1


def test_writes_queued_behind_a_blocked_batch_fail_at_their_own_deadline(
    tmp_path: Path, blocker: sqlite3.Connection
) -> None:
    """Ops queued while the writer waits for the lock fail busy_timeout after their own
    submission, not after the batch ahead has waited its whole timeout too; once the file is
    free, new ops commit as before."""
    busy = 1.0
    db = Database(_box_file(tmp_path / "box.db"), busy_timeout=busy).open()
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        ahead = db.submit(lambda conn: None)
        eventually(lambda: db.queued() == 0, 5, "the writer to take the first op")
        submitted = time.monotonic()
        behind = [db.submit(lambda conn: None) for _ in range(3)]
        errors = [f.exception(timeout=10) for f in behind]
        took = time.monotonic() - submitted
        blocker.execute("ROLLBACK")
        assert ahead.exception(timeout=10) is not None
        assert all(e is not None and "locked" in str(e) for e in errors)
        assert took <= busy + 0.5  # not 2 x busy
        assert db.write(lambda conn: 42) == 42
    finally:
        db.close()


# -- one-line errors at start and in every command ----------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(3 * PAGE))


def _text(path: Path) -> None:
    path.write_text("this is a note, not a database\n" * 200)


def _truncated(path: Path) -> None:
    _box_file(path)
    data = path.read_bytes()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(data[: len(data) // 2 + 100])


def _damaged(path: Path) -> None:
    _box_file(path)
    _damage_deliveries(path)


BAD_FILE_CASES = [
    (make, command)
    for make in (_garbage, _text, _truncated, _damaged)
    for command in (["serve"], ["stats"], ["instances", "list"])
    # A damaged deliveries table leaves the instances readable: listing them is fine.
    if not (make is _damaged and command == ["instances", "list"])
]


@pytest.mark.parametrize(("make", "command"), BAD_FILE_CASES)
def test_a_bad_database_file_is_one_line_for_every_command(
    tmp_path: Path, make: Callable[[Path], object], command: list[str]
) -> None:
    """Garbage, text, a truncated or damaged file: serve refuses to start and the commands
    refuse to read, each in one line (exit 1), never with a traceback."""
    path = tmp_path / "box.db"
    make(path)
    port = str(free_port())
    line = _one_line_error(_cli(*command, env=_env(path, INGRESS_BOX_PORT=port)))
    assert str(path) in line or "database" in line


def test_serve_on_a_folder_as_the_database_is_one_line(tmp_path: Path) -> None:
    """INGRESS_BOX_DB naming a folder is refused in one line."""
    (tmp_path / "box.db").mkdir()
    assert "folder" in _one_line_error(_cli("serve", env=_env(tmp_path / "box.db")))


def test_serve_with_the_database_under_a_regular_file_is_one_line(tmp_path: Path) -> None:
    """A database path whose parent is a file is refused in one line."""
    (tmp_path / "file").write_text("")
    _one_line_error(_cli("serve", env=_env(tmp_path / "file" / "box.db")))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file modes")
def test_serve_on_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    """A database in a folder that cannot be written is refused in one line."""
    folder = tmp_path / "ro"
    folder.mkdir()
    _box_file(folder / "box.db")
    folder.chmod(0o555)
    try:
        _one_line_error(_cli("serve", env=_env(folder / "box.db")))
    finally:
        folder.chmod(0o755)


def test_serve_on_a_locked_database_is_one_line(tmp_path: Path) -> None:
    """Another process holding the write lock at start is one line, not a traceback."""
    path = _box_file(tmp_path / "box.db")
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        env = _env(path, INGRESS_BOX_BUSY_TIMEOUT_SECONDS="0.5", INGRESS_BOX_ADMIN_TOKEN="")
        assert "locked" in _one_line_error(_cli("serve", env=env))
    finally:
        blocker.close()


def test_serve_with_a_missing_plugins_folder_is_one_line(tmp_path: Path) -> None:
    """INGRESS_BOX_PLUGINS_DIR naming no folder is one line."""
    env = _env(tmp_path / "box.db", INGRESS_BOX_PLUGINS_DIR=str(tmp_path / "nope"))
    _one_line_error(_cli("serve", env=env))


def test_serve_with_a_bad_manifest_is_one_line_without_a_traceback_before_it(
    tmp_path: Path,
) -> None:
    """A bad manifest stops serve with the manifest's one-line error, and nothing else."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "bad.toml").write_text('id = "bad"\nname = "Bad"\n')
    env = _env(tmp_path / "box.db", INGRESS_BOX_PLUGINS_DIR=str(plugins))
    assert "bad.toml" in _one_line_error(_cli("serve", env=env))


def test_stats_on_dev_null_is_one_line(tmp_path: Path) -> None:
    """``stats --db /dev/null`` says it is no database, in one line."""
    assert "not an ingress-box database" in _one_line_error(
        _cli("stats", "--db", os.devnull, env=_env(tmp_path / "unused.db"))
    )


def test_a_surrogate_in_an_argument_is_one_line(tmp_path: Path) -> None:
    """An argument that is not valid text (bytes that are not UTF-8) is exit 2, one line."""
    env = _env(_box_file(tmp_path / "box.db"))
    result = subprocess.run(
        [sys.executable, "-m", "ingress_box", "instances", "add", "generic", b"sh\xffop"],
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
    )
    assert result.returncode == 2 and "not valid UTF-8" in _one_line_error(result)


def test_admin_token_reset_on_a_mistyped_path_creates_nothing(tmp_path: Path) -> None:
    """``admin-token reset --db <typo>`` exits 1 in one line and makes no empty database."""
    typo = tmp_path / "typo.db"
    assert "no database" in _one_line_error(
        _cli("admin-token", "reset", "--db", str(typo), env=_env(typo))
    )
    assert not typo.exists()


# -- read-only commands --------------------------------------------------------------------------


@pytest.fixture
def backup_copy(tmp_path: Path) -> Path:
    """A backup of a box with one delivery: a single file in rollback-journal mode."""
    source = _box_file(tmp_path / "box.db")
    settings = load_settings({}, db_path=source, admin_token=ADMIN_TOKEN)
    with running_box(settings, run_worker=False) as live:
        assert _post_generic(live.url, "kept").status_code == 202
    copy = tmp_path / "copy.db"
    result = _cli("backup", str(copy), "--db", str(source), env=_env(source))
    assert result.returncode == 0, result.stderr
    return copy


READS = [
    ["stats"],
    ["deliveries", "list"],
    ["instances", "list"],
    ["dlq", "list"],
    ["mappings", "list"],
    ["tail", "--no-follow"],
    ["doctor"],
]


@pytest.mark.parametrize("command", READS)
def test_read_only_commands_leave_a_backup_copy_as_it_was(
    backup_copy: Path, command: list[str]
) -> None:
    """Pure reads open the file read-only: the copy keeps every byte and its journal mode, and
    no -wal or -shm appears beside it."""
    before = backup_copy.read_bytes()
    result = _cli(*command, "--db", str(backup_copy), env=_env(backup_copy))
    assert result.returncode == 0, result.stderr
    assert backup_copy.read_bytes() == before
    assert not Path(f"{backup_copy}-wal").exists() and not Path(f"{backup_copy}-shm").exists()


def test_read_only_commands_work_while_another_process_writes_the_copy(
    backup_copy: Path,
) -> None:
    """A reader of a rollback-journal file does not need the lock another writer holds."""
    writer = sqlite3.connect(backup_copy, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        env = _env(backup_copy, INGRESS_BOX_BUSY_TIMEOUT_SECONDS="0.5")
        result = _cli("deliveries", "list", "--json", "--db", str(backup_copy), env=env)
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)["items"]) == 1
    finally:
        writer.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes through file modes")
def test_read_only_commands_read_a_read_only_copy(backup_copy: Path, tmp_path: Path) -> None:
    """A backup in a folder nobody may write is still readable by stats."""
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.move(backup_copy, folder / "copy.db")
    folder.chmod(0o555)
    try:
        result = _cli("stats", "--db", str(folder / "copy.db"), env=_env(folder / "copy.db"))
        assert result.returncode == 0, result.stderr
    finally:
        folder.chmod(0o755)


# -- repeated errors in the log -----------------------------------------------------------------


_FULL = sqlite3.OperationalError("database or disk is full")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_error_is_logged_once_then_as_a_count() -> None:
    """Hundreds of identical errors are one line, then one line per interval with the count;
    another error still gets its own line at once."""
    clock = _Clock()
    handler = _Collect()
    lines = handler.records
    handler.addFilter(RepeatFilter(every=10, clock=clock))
    logger = logging.getLogger("test.repeats")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(200):
            logger.error("could not dequeue", exc_info=(sqlite3.OperationalError, _FULL, None))
            clock.now += 0.01
        logger.error("something else")
        clock.now = 10.5
        logger.error("could not dequeue", exc_info=(sqlite3.OperationalError, _FULL, None))
    finally:
        logger.removeHandler(handler)
    first, other, count = lines
    assert first.exc_info is not None and other.getMessage() == "something else"
    assert count.getMessage() == "could not dequeue (and 199 more like it in 10s)"
    assert count.exc_info is None


def test_the_log_handler_serve_uses_holds_repeats_back() -> None:
    """logs.configure puts the filter on the one handler every logger writes through."""
    from ingress_box import logs

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        logs.configure("text")
        (handler,) = root.handlers
        assert any(isinstance(f, RepeatFilter) for f in handler.filters)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
