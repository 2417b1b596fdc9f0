"""What the ``ingress-box`` commands share: exit-code exceptions, flags, the file, and output.

Every settings flag is also an ``INGRESS_BOX_*`` variable: flags default to None and go to
:func:`~ingress_box.config.load_settings` as overrides, so a flag beats the variable and the
variable beats the default. Commands on the database file open it with :func:`_database`, so
they work while ``serve`` runs: writes queue behind its writer on SQLite's lock, reads never
wait (WAL). Output goes to stdout as a table or, with ``--json``, as JSON; progress and notes go
to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..config import SYNCHRONOUS_MODES, Settings, env_name
from ..errors import NotFound
from ..store import Database

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

T = TypeVar("T")


class BadInput(click.ClickException):
    """Shown as one line on stderr; the caller's input was wrong."""

    exit_code = 2


class Failed(click.ClickException):
    """Shown as one line on stderr; the command could not do its job."""

    exit_code = 1


# -- settings flags ---------------------------------------------------------------------------

_FLAGS: dict[str, tuple[Any, str]] = {
    "host": (str, "address to listen on"),
    "run_worker": (
        bool,
        "deliver in this process (--no-run-worker: leave it to "
        "`ingress-box worker` processes on the same file)",
    ),
    "port": (int, "port to listen on"),
    "db_path": (click.Path(dir_okay=False, path_type=Path), "the SQLite file"),
    "admin_token": (str, "bearer token of the admin API (generated and printed once if unset)"),
    "public_url": (str, "base URL providers call (Twilio signs it; shown in ingress URLs)"),
    "max_body_bytes": (int, "default body cap of a route"),
    "synchronous": (
        click.Choice(SYNCHRONOUS_MODES, case_sensitive=False),
        "SQLite synchronous: FULL survives power loss, NORMAL process crashes",
    ),
    "rate_limit": (float, "verified requests per second per instance (0: off)"),
    "workers": (int, "concurrent deliveries"),
    "plugins_dir": (click.Path(file_okay=False, path_type=Path), "folder of plugin manifests"),
    "retry_max_attempts": (int, "delivery attempts before dead-lettering"),
    "retry_base_seconds": (float, "first backoff between attempts"),
    "retry_max_seconds": (float, "longest backoff between attempts"),
    "delivery_timeout_seconds": (float, "one forward attempt's timeout"),
    "lease_seconds": (float, "how long a claimed delivery stays leased"),
    "dedup_retention_days": (float, "how long dedup keys are kept"),
    "dlq_retention_days": (float, "how long dead letters are kept"),
    "log_format": (click.Choice(["text", "json"]), "log line format"),
}


def _flag(name: str) -> str:
    return "--db" if name == "db_path" else "--" + name.replace("_", "-")


def settings_options(*names: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Add one flag per setting; each defaults to None so the environment still applies."""

    def decorate(command: Callable[..., T]) -> Callable[..., T]:
        for name in reversed(names):
            kind, text = _FLAGS[name]
            # A yes/no setting is a --x/--no-x pair; None still means "not given".
            flag = f"{_flag(name)}/--no-{_flag(name)[2:]}" if kind is bool else _flag(name)
            command = click.option(
                flag,
                name,
                type=None if kind is bool else kind,
                default=None,
                help=f"{text} [env: {env_name(name)}]",
            )(command)
        return command

    return decorate


# -- flags of the commands on the database file -----------------------------------------------

db_option = click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"the SQLite file [env: {env_name('db_path')}]",
)
plugins_dir_option = click.option(
    "--plugins-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"folder of plugin manifests [env: {env_name('plugins_dir')}]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
limit_option = click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="at most this many items",
)

progress_option = click.option(
    "--progress/--no-progress",
    "show_progress",
    default=None,
    help="draw a progress bar on stderr [default: when stdout is a terminal]",
)


class _Progress:
    """A progress bar on stderr, fed ``report(done, total)``; stdout stays clean for --json.

    Drawn when asked, else only when stdout is a terminal (someone is watching). It starts
    at the first report with a total, so a job that turns out small draws nothing.
    """

    def __init__(self, label: str, show: bool | None) -> None:
        self.label = label
        self.show = sys.stdout.isatty() if show is None else show
        self._bar: ProgressBar[int] | None = None

    def __enter__(self) -> _Progress:
        return self

    def report(self, done: int, total: int) -> None:
        if not self.show or total <= 0:
            return
        if self._bar is None:
            self._bar = click.progressbar(
                length=total, label=self.label, show_pos=True, file=sys.stderr
            )
            self._bar.__enter__()
        self._bar.length = max(total, done)  # an estimate may grow while the job runs
        self._bar.update(done - self._bar.pos)

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            if exc_info[0] is None and self._bar.length is not None:
                self._bar.update(self._bar.length - self._bar.pos)
            self._bar.__exit__(None, None, None)


# -- the file ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _database(settings: Settings, *, create: bool = False) -> Iterator[Database]:
    if not create and not settings.db_path.exists():
        raise NotFound(
            f"no database at {settings.db_path} (pass --db or set {env_name('db_path')})"
        )
    db = Database(
        settings.db_path,
        synchronous=settings.synchronous,
        busy_timeout=settings.busy_timeout_seconds,
    ).open()
    try:
        yield db
    finally:
        db.close()


def _read(settings: Settings, reader: Callable[[Database], Awaitable[T]]) -> T:
    """Run one async store reader against the file."""

    async def run(db: Database) -> T:
        await db.aopen()
        try:
            return await reader(db)
        finally:
            await db.aclose()

    with _database(settings) as db:
        return asyncio.run(run(db))


def _now() -> float:
    return datetime.now(UTC).timestamp()


# -- output -----------------------------------------------------------------------------------


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _cell(value: Any, width: int = 60) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(header), *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _more(next_cursor: str | None) -> None:
    if next_cursor:
        click.echo("(more items: raise --limit or use the admin API's cursor)", err=True)
