"""What the ``ingress-box`` commands share: exit-code exceptions, flags, the file, and output.

Every settings flag is also an ``INGRESS_BOX_*`` variable: flags default to None and go to
:func:`~ingress_box.config.load_settings` as overrides, so a flag beats the variable and the
variable beats the default. Commands on the database file open it with :func:`database`, so
they work while ``serve`` runs: writes queue behind its writer on SQLite's lock, reads never
wait (WAL). Commands that only read open the file read-only (:func:`reading`): they create and
migrate nothing, take no lock, and work on a read-only copy of a backup. Output goes to stdout
as a table or, with ``--json``, as JSON; progress and notes go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from ..config import DatabaseUrl, Declaration, Settings, declarations, env_name, for_command
from ..errors import NotFound, StorageUnavailable
from ..store import Database, open_database
from ..store.sql import DATABASE_ERRORS

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

T = TypeVar("T")


class _OneLine(click.ClickException):
    """One line on stderr, red when stderr is a terminal (click strips the colour otherwise)."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.secho(f"Error: {self.format_message()}", file=file, err=True, fg="red")


class BadInput(_OneLine):
    """Shown as one line on stderr; the caller's input was wrong."""

    exit_code = 2


class Failed(_OneLine):
    """Shown as one line on stderr; the command could not do its job."""

    exit_code = 1


def warn(message: str) -> None:
    """A line on stderr that must not be missed (yellow at a terminal)."""
    click.secho(f"Warning: {message}", err=True, fg="yellow", bold=True)


# -- settings flags ---------------------------------------------------------------------------


class _Database(click.ParamType):  # type: ignore[type-arg]
    name = "path-or-url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value if isinstance(value, Path) else DatabaseUrl.parse(str(value))


DATABASE = _Database()  # a SQLite file, or a postgresql:// URL


def _click_type(d: Declaration) -> Any:
    if d.choices:
        return click.Choice(d.choices, case_sensitive=d.case_sensitive)
    if d.database:
        return DATABASE
    if d.kind is Path:
        return click.Path(dir_okay=d.folder, file_okay=not d.folder, path_type=Path)
    if d.kind in (int, float):
        # Ranges are checked by load_settings, so a flag and its variable fail alike.
        return d.kind
    return str


def _shown_default(d: Declaration) -> str:
    if d.default is None:
        return ""
    if d.kind is bool:
        return "; default: " + ("on" if d.default else "off")
    if isinstance(d.default, float) and d.default.is_integer():
        return f"; default: {int(d.default)}"
    return f"; default: {d.default}"


def settings_options(*names: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Add one flag per setting, as declared in :class:`~ingress_box.config.Settings`.

    Each defaults to None so the environment still applies; a yes/no setting is a --x/--no-x
    pair. The help names the variable and the default.
    """
    known = declarations()

    def decorate(command: Callable[..., T]) -> Callable[..., T]:
        for name in reversed(names):
            d = known[name]
            flag = f"{d.flag_name}/--no-{d.flag_name[2:]}" if d.kind is bool else d.flag_name
            command = click.option(
                flag,
                name,
                type=None if d.kind is bool else _click_type(d),
                default=None,
                help=f"{d.help} [env: {d.env_name}{_shown_default(d)}]",
            )(command)
        return command

    return decorate


def command_options(command: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Every settings flag of ``command`` (the ``commands`` of each declaration)."""
    return settings_options(*(d.name for d in for_command(command)))


# -- flags of the commands on the database file -----------------------------------------------


class FiniteFloat(click.FloatRange):
    """click's FloatRange, refusing NaN and the infinities too (a NaN compares false with any
    bound, so a plain range lets it through)."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


db_option = settings_options("db_path")
plugins_dir_option = settings_options("plugins_dir")
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
yes_option = click.option(
    "--yes",
    "-y",
    "yes",
    is_flag=True,
    help="do not ask for confirmation (never asked when stdin is not a terminal)",
)


def confirm(question: str, yes: bool) -> None:
    """Ask before a destructive step, only of someone at a terminal: a script (stdin not a
    terminal) is never held up by a prompt, and --yes skips it. "no" aborts (exit 1)."""
    if yes or not sys.stdin.isatty():
        return
    click.confirm(question, abort=True, err=True)


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


class Progress:
    """A progress bar on stderr, fed ``report(done, total)``; stdout stays clean for --json.

    Drawn when asked, else only when stdout is a terminal (someone is watching). It starts
    at the first report with a total, so a job that turns out small draws nothing.
    """

    def __init__(self, label: str, show: bool | None) -> None:
        self.label = label
        self.show = sys.stdout.isatty() if show is None else show
        self._bar: ProgressBar[int] | None = None

    def __enter__(self) -> Progress:
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
def database(
    settings: Settings, *, create: bool = False, readonly: bool = False
) -> Iterator[Database]:
    """The store, open; ``create`` makes a SQLite file when it is not there (else that is an
    error). A PostgreSQL database is given its tables when it has none."""
    path = settings.db_path
    if isinstance(path, Path):
        if not create and not path.exists():
            raise NotFound(f"no database at {path} (pass --db or set {env_name('db_path')})")
        if path.is_dir():
            raise Failed(f"{path} is a folder, not a database file")
    db = open_database(
        path,
        synchronous=settings.synchronous,
        busy_timeout=settings.busy_timeout_seconds,
        readonly=readonly,
    )
    try:
        db.open()
    # garbage, a read-only folder, a file as a folder, a PostgreSQL server not reached
    except DATABASE_ERRORS + (OSError, StorageUnavailable) as exc:
        raise Failed(f"cannot open {db.name}: {' '.join(str(exc).split())}") from exc
    try:
        yield db
    finally:
        db.close()


def reading(settings: Settings) -> contextlib.AbstractContextManager[Database]:
    """The file, open for reading only (``mode=ro``): nothing is created, migrated or locked."""
    return database(settings, readonly=True)


def read(settings: Settings, reader: Callable[[Database], Awaitable[T]]) -> T:
    """Run one async store reader against the file (opened read-only)."""

    async def run(db: Database) -> T:
        await db.aopen()
        try:
            return await reader(db)
        finally:
            await db.aclose()

    with reading(settings) as db:
        return asyncio.run(run(db))


def now() -> float:
    return datetime.now(UTC).timestamp()


# -- output -----------------------------------------------------------------------------------


def when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cell(value: Any, width: int = 60) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], width: int = 60) -> None:
    cells = [list(header), *[[cell(v, width) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def more(next_cursor: str | None) -> None:
    if next_cursor:
        click.echo("(more items: raise --limit or use the admin API's cursor)", err=True)
