"""The ``ingress-box`` command: ``serve``, ``worker``, and the operator commands registered on it.

Every flag of ``serve``/``worker`` is also an ``INGRESS_BOX_*`` variable (see
:func:`~ingress_box.cli.common.command_options`). The operator commands live in their own
modules and open the SQLite file directly, so they work while ``serve`` runs:
:mod:`.instances` (``instances``), :mod:`.deliveries` (``deliveries``, ``dlq``),
:mod:`.mappings` (``mappings``), :mod:`.bridges` (``bridges``), :mod:`.ops` (``backup``,
``stats``, ``tail``, ``doctor``, ``prune``, ``admin-token``, ``move``), :mod:`.plugins`
(``plugins``) and :mod:`.health` (``health``).

Exit codes: 0 success, 1 failure, 2 bad input.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from .. import __version__, heartbeat, logs
from ..app import create_app
from ..config import Settings, load_settings
from ..errors import ConfigError, IngressBoxError, InvalidInput, ManifestError
from ..metrics import log_attempt
from ..plugins import load_registry
from ..store import Database, dbfile
from ..store.postgres import PgDatabase, redacted
from ..store.sql import DATABASE_ERRORS
from ..web.auth import ensure_admin_token
from ..web.dashboard import PREFIX as DASHBOARD
from ..web.server import Server, server_config
from ..worker import Worker
from . import bridges as cli_bridges
from . import deliveries as cli_deliveries
from . import health as cli_health
from . import instances as cli_instances
from . import mappings as cli_mappings
from . import ops as cli_ops
from . import plugins as cli_plugins
from .common import BadInput, Failed, command_options, database

log = logging.getLogger("ingress_box.worker")

START_CHECK_SECONDS = 10.0  # quick_check at start stops here on a big file (and says so)


def _is_text(arg: str) -> bool:
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in argv arrive as lone surrogates
        return False
    return True


class _Group(click.Group):
    """Every failure is one line on stderr and an exit status, never a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for position, arg in enumerate(args, 1):
            if not _is_text(arg):
                raise BadInput(f"argument {position} is not valid UTF-8 text")
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (InvalidInput, ConfigError, ManifestError) as exc:
            raise BadInput(str(exc)) from exc
        except IngressBoxError as exc:
            raise Failed(str(exc)) from exc
        except DATABASE_ERRORS as exc:  # e.g. a page found damaged in the middle of a read
            raise Failed(f"database error: {exc}") from exc
        except OSError as exc:  # a missing folder, a read-only file system, ...
            raise Failed(str(exc)) from exc


def _configure_logging(settings: Settings) -> None:
    logs.configure(settings.log_format, settings.log_level)


# -- the program ------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ingress-box")
def main() -> None:
    """A durable, idempotent inbound-webhook appliance: one process and one SQLite file, or
    any number of processes on one PostgreSQL database."""


@main.command()
@command_options("serve")
def serve(**flags: Any) -> None:
    """Run the HTTP server and the outbox worker in this process."""
    settings = load_settings(**flags)
    _configure_logging(settings)
    # Everything that can stop the start-up fails here, in one line, before uvicorn runs the
    # lifespan (where it would be a traceback).
    load_registry(settings.plugins_dir)
    _print_start(settings)
    config = server_config(create_app(settings), settings)
    server = Server(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    # uvicorn re-raises the signal it stopped on once it is done; handled here, that ends in
    # a clean exit 0 instead of death by signal. Before uvicorn runs, the same handler
    # makes an early signal stop the start-up.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    freeze_start_up()
    server.run()
    if not server.started:
        sys.exit(1)


def freeze_start_up() -> None:
    """Leave what start-up made (the modules and the app, about 57,000 objects) out of the
    garbage collector's full passes, which look at every object it tracks: in serve under a
    closed loop, one pass took 17-19 ms of the event loop, about one every second; 4.5 ms once
    these are frozen."""
    gc.collect()
    gc.freeze()


def _print_start(settings: Settings) -> None:
    """The token (when generated), where the dashboard is, and which file this box is."""
    # Generated here rather than in the lifespan, so the token is printed exactly once, to stdout.
    with database(settings, create=True) as db:
        _check_sound(db)
        _, generated = ensure_admin_token(db, settings.admin_token)
    if generated:
        click.echo(f"admin token: {generated}")
        click.echo(
            "  shown this once: only its hash is stored (`ingress-box admin-token reset` "
            "makes a new one)"
        )
    click.echo(f"dashboard:   {settings.listen_url}{DASHBOARD}/ (log in with the API's token)")
    where = settings.db_path
    click.echo(f"database:    {where.resolve() if isinstance(where, Path) else redacted(where)}")


def _check_sound(db: Database) -> None:
    """Refuse a damaged file at start: it would fail every write and fill the log. (A
    PostgreSQL server keeps its own pages sound: nothing to check here.)"""
    if isinstance(db, PgDatabase):
        return
    found = dbfile.quick_check(db, START_CHECK_SECONDS)
    if found is None:
        log.warning(
            "quick_check of %s did not finish in %.0fs; not checked", db.path, START_CHECK_SECONDS
        )
    elif found != ["ok"]:
        raise Failed(f"{db.path} is damaged ({found[0]}): restore a backup, or see doctor --full")


@main.command("worker")
@command_options("worker")
def worker_command(**flags: Any) -> None:
    """Run only the outbox worker (for a split web/worker deployment)."""
    settings = load_settings(**flags)
    _configure_logging(settings)
    load_registry(settings.plugins_dir)  # a bad manifest stops this process as it stops serve
    with database(settings, create=True) as db:
        _check_sound(db)
        running = Worker(settings, db, watch_outbox=True)  # serve needs not wake it on SQLite
        running.observers.append(log_attempt)  # the line per attempt, as serve writes it
        freeze_start_up()
        sys.exit(_work_until_stopped(running))


def _work_until_stopped(running: Worker) -> int:
    """Deliver until SIGTERM or SIGINT; 1 if a worker thread died (a supervisor restarts us).

    While every thread is alive the heartbeat file is touched each second, for
    ``ingress-box health``; it goes when the worker stops.
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    alive = heartbeat.path_for(running.settings.db_path)
    running.start()
    log.info("worker %s started on %s", running.owner, running.db.name)
    try:
        heartbeat.beat(alive)
        while not stop.wait(1.0):
            if not running.alive():
                log.error("a worker thread died; exiting so that a supervisor restarts us")
                return 1
            heartbeat.beat(alive)
        return 0
    finally:
        heartbeat.stop(alive)
        running.stop()


# -- the operator commands, each module owning its nouns ----------------------------------------

main.add_command(cli_instances.instances_group)
main.add_command(cli_deliveries.deliveries_group)
main.add_command(cli_deliveries.replay_command)
main.add_command(cli_deliveries.dlq_group)
main.add_command(cli_mappings.mappings_group)
main.add_command(cli_bridges.bridges_group)
main.add_command(cli_ops.backup_command)
main.add_command(cli_ops.stats_command)
main.add_command(cli_ops.tail_command)
main.add_command(cli_ops.doctor_command)
main.add_command(cli_ops.prune_command)
main.add_command(cli_ops.admin_token_group)
main.add_command(cli_ops.move_command)
main.add_command(cli_plugins.plugins_group)
main.add_command(cli_health.health_command)
