"""``ingress-box health`` against real processes: serve's /readyz, a worker's heartbeat, and
what ``serve`` prints when it starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import postgres
from live import free_port
from serving import BoxProcess
from waiting import eventually

from ingress_box import heartbeat
from ingress_box.store.postgres import redacted


def health(db: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return health_of(str(db), port, *args)


def health_of(db: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``ingress-box health`` with INGRESS_BOX_DB=db (a file or a URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
    env |= {"INGRESS_BOX_DB": str(db), "INGRESS_BOX_PORT": str(port)}
    return subprocess.run(
        [sys.executable, "-m", "ingress_box", "health", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_health_passes_while_serve_answers_readyz(tmp_path: Path) -> None:
    """With serve up, health asks its /readyz and exits 0."""
    serve = BoxProcess(tmp_path / "box.db").wait_ready()
    try:
        done = health(serve.db, serve.port)
        assert done.returncode == 0, done.stderr
        assert f"ok: serve at http://127.0.0.1:{serve.port}/readyz answers 200" in done.stdout
    finally:
        assert serve.stop() == 0


def test_health_of_a_worker_follows_its_heartbeat(tmp_path: Path) -> None:
    """A worker alone passes (its heartbeat is fresh); once it stops, health exits 1."""
    worker = BoxProcess(tmp_path / "box.db", "worker").wait_started()
    port = free_port()  # nothing listens there: the heartbeat decides
    try:
        beat = heartbeat.path_for(worker.db)
        eventually(beat.exists, 30, "the worker's first heartbeat")
        done = health(worker.db, port)
        assert done.returncode == 0, done.stderr
        assert "ok: worker heartbeat" in done.stdout
        refused = health(worker.db, port, "--of", "serve")
        assert refused.returncode == 1 and "no serve listening" in refused.stderr
    finally:
        assert worker.stop() == 0
    assert not beat.exists()
    done = health(worker.db, port)
    assert done.returncode == 1 and "no worker heartbeat" in done.stderr


def test_a_stale_heartbeat_fails(tmp_path: Path) -> None:
    """A heartbeat older than --max-age-seconds (a stuck worker) exits 1."""
    db = tmp_path / "box.db"
    beat = heartbeat.path_for(db)
    beat.touch()
    old = time.time() - 120
    os.utime(beat, (old, old))
    done = health(db, free_port())
    assert done.returncode == 1
    assert re.fullmatch(r"fail: worker heartbeat 12\ds old \(at most 30s\)\n", done.stderr)
    assert health(db, free_port(), "--max-age-seconds", "600").returncode == 0


def test_serve_says_where_its_dashboard_and_database_are(tmp_path: Path) -> None:
    """serve prints the generated token as shown once, the dashboard at its real port, and the
    database's path."""
    serve = BoxProcess(tmp_path / "box.db", env={"INGRESS_BOX_ADMIN_TOKEN": ""}).wait_ready()
    try:
        out = serve.output()
    finally:
        assert serve.stop() == 0
    assert re.search(r"^admin token: ibx_\S+\n  shown this once", out, re.MULTILINE), out
    assert f"dashboard:   http://127.0.0.1:{serve.port}/admin/ui/ (log in" in out
    assert f"database:    {(tmp_path / 'box.db').resolve()}" in out


def test_serve_and_a_worker_on_postgresql(tmp_path: Path) -> None:
    """On a PostgreSQL URL: serve starts (no file to check) and names the database without
    its password; a worker alone beats, and health follows its heartbeat."""
    with postgres.fresh_schema() as url:
        on_pg = {"INGRESS_BOX_DB": url}
        serve = BoxProcess(tmp_path / "serve.db", env=on_pg).wait_ready()
        try:
            out = serve.output()
            done = health_of(url, serve.port)
            assert done.returncode == 0, done.stderr
        finally:
            assert serve.stop() == 0
        assert f"database:    {redacted(url)}" in out and ":ingress@" not in out
        worker = BoxProcess(tmp_path / "worker.db", "worker", env=on_pg).wait_started()
        port = free_port()
        try:
            beat = heartbeat.path_for(url)
            eventually(beat.exists, 30, "the worker's first heartbeat")
            done = health_of(url, port)
            assert done.returncode == 0 and "ok: worker heartbeat" in done.stdout, done.stderr
        finally:
            assert worker.stop() == 0
        assert not beat.exists()
        assert health_of(url, port).returncode == 1
