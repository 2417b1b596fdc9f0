"""Operating the database: ``backup``, ``stats``, ``tail``, ``doctor``, ``prune``,
``admin-token reset`` and ``move``.

All of them but ``move`` work while ``serve`` runs. ``doctor`` exits 1 when a check fails;
warnings do not.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .. import backup, doctor
from ..config import DatabaseUrl, env_name, load_settings
from ..errors import NotFound
from ..plugins import load_registry
from ..store import move, retention, stats, tail
from ..web.auth import reset_admin_token
from .common import (
    BadInput,
    FiniteFloat,
    Progress,
    cell,
    command_options,
    confirm,
    database,
    db_option,
    json_option,
    now,
    plugins_dir_option,
    print_json,
    progress_option,
    reading,
    when,
    yes_option,
)


def _amount(key: str, value: Any) -> str:
    """A figure for people: sizes in MiB, ages as minutes and seconds."""
    if value is None:
        return "-"
    if key.endswith("_bytes"):
        return f"{value / 1_048_576:.1f} MiB"
    if key.endswith("_seconds"):
        minutes, seconds = divmod(int(value), 60)
        return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"
    return str(value)


def _backup_file(given: str) -> Path:
    """The file a backup goes to: PATH itself, or a dated file in PATH when PATH is a folder
    or ends with a slash (a folder that does not exist yet is made)."""
    path = Path(given)
    if given.endswith(("/", os.sep)) or path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return path / f"ingress-box-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.db"
    return path


@click.command("backup")
@click.argument("given", metavar="PATH", type=click.Path())
@click.option("--force", is_flag=True, help="replace PATH if it exists")
@progress_option
@db_option
@json_option
def backup_command(
    given: str, force: bool, show_progress: bool | None, db_path: Path | None, as_json: bool
) -> None:
    """Copy the database to PATH while it runs: a file, or a folder (an existing one, or any
    PATH ending in /, made if missing) to put a dated file in.

    The copy is one consistent moment of the file: every delivery committed before the backup
    started is in it. It is a single file (no -wal) that ``serve --db`` opens as it is.
    """
    settings = load_settings(db_path=db_path)
    if not isinstance(settings.db_path, Path):
        raise BadInput("a PostgreSQL database is backed up with pg_dump (see the README)")
    if not settings.db_path.exists():  # before a folder is made for a backup of nothing
        raise NotFound(f"no database at {settings.db_path}")
    path = _backup_file(given)
    if path.exists() and not force:
        raise BadInput(f"{path} exists (pass --force to replace it)")
    if path.resolve() == settings.db_path.resolve():
        raise BadInput("PATH is the database itself")
    if not path.parent.is_dir():
        raise BadInput(f"no folder {path.parent}")
    with reading(settings) as db, Progress("backing up", show_progress) as bar:
        report = backup.backup(db, path, bar.report)
    data = {
        "path": str(report.path),
        "pages": report.pages,
        "bytes": report.bytes,
        "deliveries": report.deliveries,
        "seconds": round(report.seconds, 3),
    }
    if as_json:
        print_json(data)
    else:
        click.echo(
            f"backup: {report.path} ({_amount('_bytes', report.bytes)}, "
            f"{report.deliveries} deliveries, {report.seconds:.2f}s)"
        )


@click.command("stats")
@db_option
@json_option
def stats_command(db_path: Path | None, as_json: bool) -> None:
    """Show deliveries, backlog, attempts, dead letters and file sizes at one moment."""
    with reading(load_settings(db_path=db_path)) as db:
        data = stats.stats(db, now()).to_json()
    if as_json:
        print_json(data)
        return
    for section, figures in data.items():
        shown = "  ".join(
            f"{k.removesuffix('_bytes').removesuffix('_seconds').replace('_', ' ')} {_amount(k, v)}"
            for k, v in figures.items()
        )
        click.echo(f"{section.replace('_', ' ') + ':':<20}{shown}")


def _tail_line(event: dict[str, Any]) -> str:
    where = f"{event['plugin']}/{event['instance']}/{event['route']}"
    if event["event"] == "received":
        extra = f"  conversation {event['conversation']}" if event["conversation"] else ""
        return (
            f"{when(event['at'])}  {'received':<9}  {where}  {event['id']}  "
            f"provider id {event['provider_delivery_id']}{extra}"
        )
    status = f"HTTP {event['status_code']}" if event["status_code"] else "no answer"
    # A failure's error already quotes the answer; a success shows the answer's start.
    said = event["error"] or event["response"]
    said = f"  {cell(' '.join(said.split()), 120)}" if said else ""
    return (
        f"{when(event['at'])}  {event['outcome']:<9}  {where}  {event['id']}  "
        f"attempt {event['attempt']}  {status}  {event['duration_ms']} ms{said}"
    )


@click.command("tail")
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="keep printing new events until Ctrl-C",
)
@click.option(
    "--since",
    type=FiniteFloat(min=0),
    default=300.0,
    show_default=True,
    help="start with the events of the last SECONDS",
)
@db_option
@json_option
def tail_command(follow: bool, since: float, db_path: Path | None, as_json: bool) -> None:
    """Print deliveries as they are received and each delivery attempt's outcome.

    With --json, one JSON object per line.
    """
    with reading(load_settings(db_path=db_path)) as db:
        try:
            for event in tail.tail(db, now() - since, follow=follow):
                data = event.to_json()
                click.echo(json.dumps(data, sort_keys=True) if as_json else _tail_line(data))
        except KeyboardInterrupt:  # Ctrl-C is how a follow ends: not an error
            pass


@click.command("doctor")
@click.option("--full", is_flag=True, help="a full integrity_check instead of quick_check")
@click.option(
    "--stuck-minutes",
    type=FiniteFloat(min=0),
    default=15.0,
    show_default=True,
    help="a lane head or pending event older than this is stuck",
)
@click.option(
    "--stuck-attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="a lane head with this many attempts is stuck",
)
@db_option
@plugins_dir_option
@command_options("doctor")
@json_option
def doctor_command(
    full: bool, stuck_minutes: float, stuck_attempts: int, as_json: bool, **flags: Any
) -> None:
    """Check the file and the instances; exit 1 if a check fails (warnings do not)."""
    settings = load_settings(**flags)
    registry = load_registry(settings.plugins_dir)
    limits = doctor.Limits(stuck_attempts=stuck_attempts, stuck_seconds=stuck_minutes * 60)
    with reading(settings) as db:
        checks = doctor.doctor(
            db,
            now=now(),
            public_url=settings.public_url,
            signing_plugins=doctor.url_signing_plugins(registry),
            limits=limits,
            full=full,
        )
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        print_json(
            {
                "ok": not failed,
                "checks": [
                    {"name": c.name, "status": c.status, "detail": c.detail} for c in checks
                ],
            }
        )
    else:
        for c in checks:
            click.echo(f"{c.status:<5} {c.name:<15} {c.detail}")
    if failed:
        sys.exit(1)


@click.command("prune")
@command_options("prune")
@progress_option
@json_option
def prune_command(show_progress: bool | None, as_json: bool, **flags: Any) -> None:
    """Prune what the retention windows allow now, then checkpoint the WAL.

    The worker does this hourly; run it to reclaim space at once.
    """
    settings = load_settings(**flags)
    at = now()
    with database(settings) as db, Progress("pruning", show_progress) as bar:
        due = retention.due(db, settings, at) if bar.show else 0
        done = 0

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            bar.report(done, due)

        report = retention.run(db, settings, at, progress=advance)
    if as_json:
        print_json(report)
    else:
        click.echo(
            ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in report.items() if k != "checkpoint")
        )


@click.group("admin-token")
def admin_token_group() -> None:
    """Manage the stored admin token."""


@admin_token_group.command("reset")
@yes_option
@db_option
@json_option
def admin_token_reset(yes: bool, db_path: Path | None, as_json: bool) -> None:
    """Replace the stored admin token and print the new one (restart serve to apply it)."""
    settings = load_settings(db_path=db_path)
    confirm("Replace the admin token? The old one stops working when serve restarts.", yes)
    with database(settings) as db:  # a mistyped path must not become a new, empty box
        token = reset_admin_token(db)
    if as_json:
        print_json({"admin_token": token})
    else:
        click.echo(f"admin token: {token}")
    if settings.admin_token:
        click.echo(
            f"note: {env_name('admin_token')} is set and takes precedence over the stored token",
            err=True,
        )
    click.echo("A running serve keeps the old token until it restarts.", err=True)


@click.command("move")
@click.option(
    "--to",
    "url",
    required=True,
    metavar="URL",
    help="the empty PostgreSQL database: postgresql://user:password@host:5432/dbname",
)
@progress_option
@db_option
@json_option
def move_command(url: str, show_progress: bool | None, db_path: Path | None, as_json: bool) -> None:
    """Copy this SQLite box into an empty PostgreSQL database, then run the box there with
    INGRESS_BOX_DB=URL.

    Stop serve and every worker on the file first: the copy is the file at one moment, and what
    is accepted after it stays behind. Everything goes over (instances and their secrets,
    pending and dead work, history, mappings, bridges, the admin token); the file is only read.
    A database that holds anything is refused, and a move that fails leaves it empty.
    """
    settings = load_settings(db_path=db_path)
    if not isinstance(settings.db_path, Path):
        raise BadInput("--db is already a PostgreSQL database: move copies a SQLite file")
    if not DatabaseUrl.matches(url):
        raise BadInput("--to must be a postgresql:// URL")
    with reading(settings) as db, Progress("moving", show_progress) as bar:
        moved = move.move(db, url, bar.report)
    if as_json:
        print_json({"to": moved.to, "rows": moved.rows, "seconds": round(moved.seconds, 3)})
    else:
        copied = ", ".join(f"{table} {rows}" for table, rows in moved.rows.items() if rows)
        click.echo(f"moved to {moved.to} in {moved.seconds:.2f}s: {copied or 'nothing'}")
        click.echo(f"next: run the box with {env_name('db_path')}=<the URL>", err=True)
