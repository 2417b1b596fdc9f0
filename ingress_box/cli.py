"""The ``ingress-box`` command: ``serve``, ``worker``, and operator commands on the database file.

Every flag of ``serve``/``worker`` is also an ``INGRESS_BOX_*`` variable: flags default to None
and go to :func:`~ingress_box.config.load_settings` as overrides, so a flag beats the variable
and the variable beats the default. The operator commands (``instances``, ``dlq``,
``deliveries``, ``mappings``, ``admin-token``) open the SQLite file directly, so they work while
``serve`` runs: writes queue behind its writer on SQLite's lock, reads never wait (WAL).

Exit codes: 0 success, 1 failure, 2 bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from . import __version__, instances, logs, ops, worker
from .app import create_app
from .auth import ensure_admin_token, reset_admin_token
from .config import SYNCHRONOUS_MODES, Settings, env_name, load_settings
from .errors import ConfigError, IngressBoxError, InvalidInput, ManifestError, NotFound
from .plugins import load_registry
from .store import Database, retention
from .store import dead_letters as store_dead_letters
from .store import deliveries as store_deliveries
from .store import instances as store_instances
from .store.dead_letters import MAX_REDRIVE_BATCH
from .store.instances import LANE_POLICIES

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

T = TypeVar("T")


class BadInput(click.ClickException):
    """Shown as one line on stderr; the caller's input was wrong."""

    exit_code = 2


class Failed(click.ClickException):
    """Shown as one line on stderr; the command could not do its job."""

    exit_code = 1


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (InvalidInput, ConfigError, ManifestError) as exc:
            raise BadInput(str(exc)) from exc
        except IngressBoxError as exc:
            raise Failed(str(exc)) from exc


# -- settings flags ---------------------------------------------------------------------------

_FLAGS: dict[str, tuple[Any, str]] = {
    "host": (str, "address to listen on"),
    "port": (int, "port to listen on"),
    "db_path": (click.Path(dir_okay=False, path_type=Path), "the SQLite file"),
    "admin_token": (str, "bearer token of the admin API (generated and printed once if unset)"),
    "public_url": (str, "base URL providers call (Twilio signs it; shown in ingress URLs)"),
    "max_body_bytes": (int, "default body cap of a route"),
    "synchronous": (click.Choice(SYNCHRONOUS_MODES, case_sensitive=False),
                    "SQLite synchronous: FULL survives power loss, NORMAL process crashes"),
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
_COMMON = ("db_path", "synchronous", "plugins_dir", "log_format")
_WORKER = ("workers", "retry_max_attempts", "retry_base_seconds", "retry_max_seconds",
           "delivery_timeout_seconds", "lease_seconds", "dedup_retention_days",
           "dlq_retention_days")
_HTTP = ("host", "port", "admin_token", "public_url", "max_body_bytes", "rate_limit")


def _flag(name: str) -> str:
    return "--db" if name == "db_path" else "--" + name.replace("_", "-")


def settings_options(*names: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Add one flag per setting; each defaults to None so the environment still applies."""

    def decorate(command: Callable[..., T]) -> Callable[..., T]:
        for name in reversed(names):
            kind, text = _FLAGS[name]
            command = click.option(_flag(name), name, type=kind, default=None,
                                   help=f"{text} [env: {env_name(name)}]")(command)
        return command

    return decorate


def _configure_logging(settings: Settings) -> None:
    logs.configure(settings.log_format)


# -- the program ------------------------------------------------------------------------------

@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ingress-box")
def main() -> None:
    """A durable, idempotent inbound-webhook appliance: one process, one SQLite file."""


@main.command()
@settings_options(*_HTTP, *_COMMON, *_WORKER)
def serve(**flags: Any) -> None:
    """Run the HTTP server and the outbox worker in this process."""
    settings = load_settings(**flags)
    _configure_logging(settings)
    _print_generated_token(settings)
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, lifespan="on",
        log_level="info", timeout_graceful_shutdown=10,
        access_log=False,  # the box logs one structured line per request itself
        # With JSON logs, uvicorn's own lines go through our handler too.
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG)
    server = uvicorn.Server(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    # uvicorn re-raises the signal it stopped on once it is done; handled here, that ends in
    # a clean exit 0 instead of death by signal. Before uvicorn runs, the same handler
    # makes an early signal stop the start-up.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    server.run()
    if not server.started:
        sys.exit(1)


def _print_generated_token(settings: Settings) -> None:
    # Generated here rather than in the lifespan, so the token is printed exactly once, to stdout.
    with _database(settings, create=True) as db:
        _, generated = ensure_admin_token(db, settings.admin_token)
    if generated:
        click.echo(f"admin token: {generated}")


@main.command("worker")
@settings_options(*_COMMON, *_WORKER)
def worker_command(**flags: Any) -> None:
    """Run only the outbox worker (for a split web/worker deployment)."""
    settings = load_settings(**flags)
    _configure_logging(settings)
    sys.exit(worker.run_standalone(settings))


# -- working on the database file ---------------------------------------------------------------

db_option = click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
                         default=None, help=f"the SQLite file [env: {env_name('db_path')}]")
plugins_dir_option = click.option(
    "--plugins-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help=f"folder of plugin manifests [env: {env_name('plugins_dir')}]")
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
limit_option = click.option("--limit", type=click.IntRange(1, 1000), default=100,
                            show_default=True, help="at most this many items")

progress_option = click.option(
    "--progress/--no-progress", "show_progress", default=None,
    help="draw a progress bar on stderr [default: when stdout is a terminal]")


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
            self._bar = click.progressbar(length=total, label=self.label, show_pos=True,
                                           file=sys.stderr)
            self._bar.__enter__()
        self._bar.length = max(total, done)  # an estimate may grow while the job runs
        self._bar.update(done - self._bar.pos)

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            if exc_info[0] is None and self._bar.length is not None:
                self._bar.update(self._bar.length - self._bar.pos)
            self._bar.__exit__(None, None, None)


@contextlib.contextmanager
def _database(settings: Settings, *, create: bool = False) -> Iterator[Database]:
    if not create and not settings.db_path.exists():
        raise NotFound(f"no database at {settings.db_path} (pass --db or set "
                       f"{env_name('db_path')})")
    db = Database(settings.db_path, synchronous=settings.synchronous,
                  busy_timeout=settings.busy_timeout_seconds).open()
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


def _public_base(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url
    host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


@main.group("instances")
def instances_group() -> None:
    """Add, list, rotate and remove plugin instances."""


@instances_group.command("add")
@click.argument("plugin")
@click.argument("instance")
@click.option("--target-url", help="where the forward handler POSTs deliveries")
@click.option("--secret", help="the provider's signing secret (generated if not given)")
@click.option("--verify-token", help="token of a GET challenge (generated if not given)")
@click.option("--session", help="session this instance belongs to")
@click.option("--lane-policy", type=click.Choice(LANE_POLICIES),
              help="progress (default) or strict")
@click.option("--handler", help="handler name or package.module:function (default: the plugin's)")
@click.option("--config", "config_json", help="handler config, a JSON object")
@click.option("--disabled", is_flag=True, help="create it disabled")
@db_option
@plugins_dir_option
@json_option
def instances_add(plugin: str, instance: str, config_json: str | None, disabled: bool,
                  db_path: Path | None, plugins_dir: Path | None, as_json: bool,
                  **fields: str | None) -> None:
    """Create an instance and print its secrets (shown only this once)."""
    settings = load_settings(db_path=db_path, plugins_dir=plugins_dir)
    registry = load_registry(settings.plugins_dir)
    given: dict[str, object] = {k: v for k, v in fields.items() if v is not None}
    if config_json is not None:
        try:
            given["config"] = json.loads(config_json)
        except ValueError as exc:
            raise InvalidInput(f"--config is not JSON: {exc}") from exc
    if disabled:
        given["enabled"] = False
    inst, shown = instances.new_instance(registry, plugin, instance, given, _now())
    with _database(settings, create=True) as db:
        db.write(store_instances.insert(inst))
    created = instances.created_json(registry, inst, shown, _public_base(settings))
    if as_json:
        _print_json(created)
        return
    click.echo(f"created {inst.plugin_id}/{inst.instance_id}")
    for name, url in created["ingress_urls"].items():
        click.echo(f"ingress url ({name}): {url}")
    click.echo(f"secret:          {shown['secret']}")
    click.echo(f"verify token:    {shown['verify_token']}")
    click.echo(f"outbound secret: {shown['outbound_secret']}")
    click.echo("Store these now: the secrets are not shown again.", err=True)


@instances_group.command("list")
@click.option("--plugin", help="only this plugin's instances")
@db_option
@json_option
def instances_list(plugin: str | None, db_path: Path | None, as_json: bool) -> None:
    """List instances (secrets masked)."""
    settings = load_settings(db_path=db_path)

    async def every(db: Database) -> list[store_instances.Instance]:
        found: list[store_instances.Instance] = []
        cursor: str | None = None
        while True:
            page = await store_instances.alist_page(db, plugin, cursor, 1000)
            found.extend(page.items)
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    items = _read(settings, every)
    if as_json:
        _print_json({"items": [inst.to_json() for inst in items]})
        return
    _table(["PLUGIN", "INSTANCE", "ENABLED", "HANDLER", "LANES", "TARGET"],
           [[i.plugin_id, i.instance_id, "yes" if i.enabled else "no", i.handler, i.lane_policy,
             i.target_url] for i in items])


@instances_group.command("rotate")
@click.argument("plugin")
@click.argument("instance")
@click.option("--secret", help="the new secret (generated if not given)")
@click.option("--grace-seconds", type=click.FloatRange(min=0), default=None,
              help="how long the old secret keeps verifying (default: the rotation grace)")
@db_option
@plugins_dir_option
@json_option
def instances_rotate(plugin: str, instance: str, secret: str | None, grace_seconds: float | None,
                     db_path: Path | None, plugins_dir: Path | None, as_json: bool) -> None:
    """Give an instance a new secret; the old one verifies until the grace window ends."""
    settings = load_settings(db_path=db_path, plugins_dir=plugins_dir)
    registry = load_registry(settings.plugins_dir)
    grace = settings.rotation_grace_hours * 3600 if grace_seconds is None else grace_seconds
    with _database(settings) as db:
        current = store_instances.get(db, plugin, instance)
        if current is None:
            raise NotFound(f"no instance {plugin}/{instance}")
        op, new_secret = instances.rotation(registry, current, secret, grace, _now())
        inst: store_instances.Instance = db.write(op)
    if as_json:
        _print_json({**inst.to_json(), "secret": new_secret,
                     "previous_secret_valid_until": inst.previous_secret_until})
        return
    click.echo(f"secret: {new_secret}")
    click.echo(f"previous secret valid until: {_when(inst.previous_secret_until)}")
    click.echo("Store it now: the secret is not shown again.", err=True)


@instances_group.command("remove")
@click.argument("plugin")
@click.argument("instance")
@db_option
def instances_remove(plugin: str, instance: str, db_path: Path | None) -> None:
    """Delete an instance (its ingress URL answers 404 from now on)."""
    with _database(load_settings(db_path=db_path)) as db:
        db.write(store_instances.delete(plugin, instance))
    click.echo(f"removed {plugin}/{instance}")


@main.group("dlq")
def dlq_group() -> None:
    """Read, redrive and discard dead letters."""


@dlq_group.command("list")
@click.option("--plugin", help="only this plugin")
@click.option("--instance", help="only this instance")
@limit_option
@db_option
@json_option
def dlq_list(plugin: str | None, instance: str | None, limit: int, db_path: Path | None,
             as_json: bool) -> None:
    """List open dead letters, oldest first."""
    selection = store_dead_letters.Selection(plugin, instance)
    page = _read(load_settings(db_path=db_path),
                 lambda db: store_dead_letters.alist_page(db, selection, None, limit))
    if as_json:
        _print_json({"items": page.items, "next_cursor": page.next_cursor})
        return
    _table(["ID", "DELIVERY", "PLUGIN", "INSTANCE", "ATTEMPTS", "CREATED", "LAST ERROR"],
           [[d["id"], d["delivery"], d["plugin"], d["instance"], d["attempts"],
             _when(d["created_at"]), d["last_error"]] for d in page.items])
    _more(page.next_cursor)


@dlq_group.command("redrive")
@click.option("--plugin", help="only this plugin")
@click.option("--instance", help="only this instance")
@click.option("--id", "ids", multiple=True, help="only this dead letter (repeatable)")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="redrive at most this many (default: all)")
@progress_option
@db_option
@json_option
def dlq_redrive(plugin: str | None, instance: str | None, ids: tuple[str, ...],
                limit: int | None, show_progress: bool | None, db_path: Path | None,
                as_json: bool) -> None:
    """Send dead letters back to the outbox, in bounded batches."""
    selection = store_dead_letters.Selection(plugin, instance, list(ids) if ids else None)
    total, remaining = 0, 0
    with (_database(load_settings(db_path=db_path)) as db,
          _Progress("redriving", show_progress) as bar):
        while limit is None or total < limit:
            batch = MAX_REDRIVE_BATCH if limit is None else min(MAX_REDRIVE_BATCH, limit - total)
            redriven, remaining = db.write(store_dead_letters.redrive(selection, batch, _now()))
            total += redriven
            if remaining == 0 or redriven == 0:
                break
            # Another batch follows: the end is what is done plus what is left to do.
            left = remaining if limit is None else min(remaining, limit - total)
            bar.report(total, total + left)
    if as_json:
        _print_json({"redriven": total, "remaining": remaining})
    else:
        click.echo(f"redriven: {total}, remaining: {remaining}")


@dlq_group.command("discard")
@click.argument("dead_letter_id")
@db_option
def dlq_discard(dead_letter_id: str, db_path: Path | None) -> None:
    """Drop one dead letter for good."""
    with _database(load_settings(db_path=db_path)) as db:
        db.write(store_dead_letters.discard(dead_letter_id))
    click.echo(f"discarded {dead_letter_id}")


@main.group("deliveries")
def deliveries_group() -> None:
    """Inspect accepted deliveries."""


@deliveries_group.command("list")
@click.option("--plugin", help="only this plugin")
@click.option("--instance", help="only this instance")
@click.option("--state", type=click.Choice(["pending", "delivered", "dead"]))
@limit_option
@db_option
@json_option
def deliveries_list(plugin: str | None, instance: str | None, state: str | None, limit: int,
                    db_path: Path | None, as_json: bool) -> None:
    """List deliveries, newest first."""
    page = _read(load_settings(db_path=db_path), lambda db: store_deliveries.alist_page(
        db, plugin, instance, state, None, limit))
    if as_json:
        _print_json({"items": page.items, "next_cursor": page.next_cursor})
        return
    _table(["ID", "PLUGIN", "INSTANCE", "ROUTE", "STATE", "ATTEMPTS", "RECEIVED", "LAST ERROR"],
           [[d["id"], d["plugin"], d["instance"], d["route"], d["state"], d["attempts"],
             _when(d["received_at"]), d["last_error"]] for d in page.items])
    _more(page.next_cursor)


@deliveries_group.command("show")
@click.argument("delivery_id")
@db_option
@json_option
def deliveries_show(delivery_id: str, db_path: Path | None, as_json: bool) -> None:
    """Show one delivery with its headers, body and attempts."""
    data = _read(load_settings(db_path=db_path), lambda db: store_deliveries.aget(db, delivery_id))
    if as_json:
        _print_json(data)
        return
    for key in ("id", "plugin", "instance", "route", "provider_delivery_id", "conversation",
                "state", "attempts", "last_error", "content_type", "size"):
        click.echo(f"{key}: {_cell(data.get(key), 200)}")
    click.echo(f"received_at: {_when(data['received_at'])}")
    click.echo(f"delivered_at: {_when(data['delivered_at'])}")
    for attempt in data["attempt_log"]:
        click.echo(f"attempt {attempt['attempt']}: {attempt['outcome']} "
                   f"status={_cell(attempt['status_code'])} error={_cell(attempt['error'])}")
    click.echo("headers: " + json.dumps(data["headers"]))
    if "body" in data:
        click.echo("body: " + data["body"])
    elif "body_base64" in data:
        click.echo("body (base64): " + data["body_base64"])
    else:
        click.echo("body: (pruned after delivery)")


@main.group("admin-token")
def admin_token_group() -> None:
    """Manage the stored admin token."""


@admin_token_group.command("reset")
@db_option
def admin_token_reset(db_path: Path | None) -> None:
    """Replace the stored admin token and print the new one (restart serve to apply it)."""
    settings = load_settings(db_path=db_path)
    with _database(settings, create=True) as db:
        token = reset_admin_token(db)
    click.echo(f"admin token: {token}")
    if settings.admin_token:
        click.echo(f"note: {env_name('admin_token')} is set and takes precedence over the "
                   "stored token", err=True)
    click.echo("A running serve keeps the old token until it restarts.", err=True)


# -- operating the file: backup, stats, tail, doctor, prune -----------------------------------

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


@main.command("backup")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="replace PATH if it exists")
@progress_option
@db_option
@json_option
def backup_command(path: Path, force: bool, show_progress: bool | None, db_path: Path | None,
                   as_json: bool) -> None:
    """Copy the database to PATH (a file, or a folder to put a dated file in) while it runs.

    The copy is one consistent moment of the file: every delivery committed before the backup
    started is in it. It is a single file (no -wal) that ``serve --db`` opens as it is.
    """
    settings = load_settings(db_path=db_path)
    if path.is_dir():
        path = path / f"ingress-box-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.db"
    if path.exists() and not force:
        raise BadInput(f"{path} exists (pass --force to replace it)")
    if path.resolve() == settings.db_path.resolve():
        raise BadInput("PATH is the database itself")
    if not path.parent.is_dir():
        raise BadInput(f"no folder {path.parent}")
    with _database(settings) as db, _Progress("backing up", show_progress) as bar:
        report = ops.backup(db, path, bar.report)
    data = {"path": str(report.path), "pages": report.pages, "bytes": report.bytes,
            "deliveries": report.deliveries, "seconds": round(report.seconds, 3)}
    if as_json:
        _print_json(data)
    else:
        click.echo(f"backup: {report.path} ({_amount('_bytes', report.bytes)}, "
                   f"{report.deliveries} deliveries, {report.seconds:.2f}s)")


@main.command("stats")
@db_option
@json_option
def stats_command(db_path: Path | None, as_json: bool) -> None:
    """Show deliveries, backlog, attempts, dead letters and file sizes at one moment."""
    with _database(load_settings(db_path=db_path)) as db:
        data = ops.stats(db, _now())
    if as_json:
        _print_json(data)
        return
    for section, figures in data.items():
        shown = "  ".join(f"{k.removesuffix('_bytes').removesuffix('_seconds').replace('_', ' ')}"
                          f" {_amount(k, v)}" for k, v in figures.items())
        click.echo(f"{section.replace('_', ' ') + ':':<20}{shown}")


def _tail_line(event: dict[str, Any]) -> str:
    where = f"{event['plugin']}/{event['instance']}/{event['route']}"
    if event["event"] == "received":
        extra = f"  conversation {event['conversation']}" if event["conversation"] else ""
        return (f"{_when(event['at'])}  {'received':<9}  {where}  {event['id']}  "
                f"provider id {event['provider_delivery_id']}{extra}")
    status = f"HTTP {event['status_code']}" if event["status_code"] else "no answer"
    error = f"  {_cell(event['error'], 120)}" if event["error"] else ""
    return (f"{_when(event['at'])}  {event['outcome']:<9}  {where}  {event['id']}  "
            f"attempt {event['attempt']}  {status}  {event['duration_ms']} ms{error}")


@main.command("tail")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="keep printing new events until Ctrl-C")
@click.option("--since", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="start with the events of the last SECONDS")
@db_option
@json_option
def tail_command(follow: bool, since: float, db_path: Path | None, as_json: bool) -> None:
    """Print deliveries as they are received and each delivery attempt's outcome.

    With --json, one JSON object per line.
    """
    with _database(load_settings(db_path=db_path)) as db:
        try:
            for event in ops.tail(db, _now() - since, follow=follow):
                click.echo(json.dumps(event, sort_keys=True) if as_json else _tail_line(event))
        except KeyboardInterrupt:  # Ctrl-C is how a follow ends: not an error
            pass


@main.command("doctor")
@click.option("--full", is_flag=True, help="a full integrity_check instead of quick_check")
@click.option("--stuck-minutes", type=click.FloatRange(min=0), default=15.0, show_default=True,
              help="a lane head or pending event older than this is stuck")
@click.option("--stuck-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="a lane head with this many attempts is stuck")
@db_option
@plugins_dir_option
@json_option
def doctor_command(full: bool, stuck_minutes: float, stuck_attempts: int, db_path: Path | None,
                   plugins_dir: Path | None, as_json: bool) -> None:
    """Check the file and the instances; exit 1 if a check fails (warnings do not)."""
    settings = load_settings(db_path=db_path, plugins_dir=plugins_dir)
    registry = load_registry(settings.plugins_dir)
    limits = ops.Limits(stuck_attempts=stuck_attempts, stuck_seconds=stuck_minutes * 60)
    with _database(settings) as db:
        checks = ops.doctor(db, now=_now(), public_url=settings.public_url,
                            signing_plugins=ops.url_signing_plugins(registry), limits=limits,
                            full=full)
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        _print_json({"ok": not failed,
                     "checks": [{"name": c.name, "status": c.status, "detail": c.detail}
                                for c in checks]})
    else:
        for c in checks:
            click.echo(f"{c.status:<5} {c.name:<15} {c.detail}")
    if failed:
        sys.exit(1)


@main.command("prune")
@settings_options("db_path", "dedup_retention_days", "dlq_retention_days")
@progress_option
@json_option
def prune_command(show_progress: bool | None, as_json: bool, **flags: Any) -> None:
    """Prune what the retention windows allow now, then checkpoint the WAL.

    The worker does this hourly; run it to reclaim space at once.
    """
    settings = load_settings(**flags)
    now = _now()
    with _database(settings) as db, _Progress("pruning", show_progress) as bar:
        due = retention.due(db, settings, now) if bar.show else 0
        done = 0

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            bar.report(done, due)

        report = retention.run(db, settings, now, progress=advance)
    if as_json:
        _print_json(report)
    else:
        click.echo(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in report.items()
                             if k != "checkpoint"))


# Last, because it builds on the helpers above; importing it registers ``mappings`` on main.
from . import cli_mappings  # noqa: E402, F401
