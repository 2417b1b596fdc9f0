"""``ingress-box deliveries``, ``ingress-box replay`` and ``ingress-box dlq``: accepted
deliveries, sending them again, and dead letters.

``deliveries`` reads, and ``deliveries replay`` sends one delivery again. ``replay`` sends a
time range again and ``dlq redrive`` sends dead letters back, both in bounded batches with a
progress bar on stderr. Each of these and ``discard`` (which lets a strict lane move on) then
wakes the workers on the file, so a running ``serve`` delivers at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import click

from .. import listing
from ..config import load_settings
from ..errors import InvalidInput
from ..store import Database
from ..store import dead_letters as store_dead_letters
from ..store import deliveries as store_deliveries
from ..store import replay as store_replay
from ..values import check_time
from ..worker import wake_workers
from .common import (
    BadInput,
    Progress,
    cell,
    confirm,
    database,
    db_option,
    json_option,
    limit_option,
    more,
    now,
    print_json,
    progress_option,
    read,
    table,
    when,
    yes_option,
)


@click.group("deliveries")
def deliveries_group() -> None:
    """Inspect accepted deliveries."""


Decorator = Callable[[Callable[..., None]], Callable[..., None]]
_FILTER_OPTIONS: tuple[Decorator, ...] = (
    click.option("--plugin", help="only this plugin"),
    click.option("--instance", help="only this instance"),
    click.option("--state", type=click.Choice(store_deliveries.STATES)),
    click.option("--event-type", help="only events of this type (as listed)"),
    click.option("--since", help="received at or after: unix seconds or ISO 8601"),
    click.option("--until", help="received before: unix seconds or ISO 8601"),
    click.option("--search", help="words the body holds, as a phrase (kept bodies only)"),
)


def _filter_options(command: Callable[..., None]) -> Callable[..., None]:
    """The list's filters, as the admin API names them (``ingress_box.listing``)."""
    for option in reversed(_FILTER_OPTIONS):
        command = option(command)
    return command


def _filters(
    plugin: str | None,
    instance: str | None,
    state: str | None,
    event_type: str | None,
    since: str | None,
    until: str | None,
    search: str | None,
) -> store_deliveries.Filters:
    return listing.filters_of(
        {
            "plugin": plugin,
            "instance": instance,
            "state": state,
            "event_type": event_type,
            "since": since,
            "until": until,
            "q": search,
        }
    )


@deliveries_group.command("list")
@_filter_options
@limit_option
@db_option
@json_option
def deliveries_list(limit: int, db_path: Path | None, as_json: bool, **given: str | None) -> None:
    """List deliveries, newest first."""
    filters = _filters(**given)
    page = read(
        load_settings(db_path=db_path),
        lambda db: store_deliveries.alist_page(db, filters, None, limit),
    )
    if as_json:
        print_json({"items": [d.to_json() for d in page.items], "next_cursor": page.next_cursor})
        return
    table(
        [
            "ID",
            "PLUGIN",
            "INSTANCE",
            "ROUTE",
            "EVENT",
            "STATE",
            "ATTEMPTS",
            "RECEIVED",
            "LAST ERROR",
        ],
        [
            [
                d.id,
                d.plugin_id,
                d.instance_id,
                d.route,
                d.event_type,
                d.state,
                d.attempts,
                when(d.received_at),
                d.last_error,
            ]
            for d in page.items
        ],
    )
    more(page.next_cursor)


@deliveries_group.command("export")
@click.option("--format", "fmt", type=click.Choice(listing.FORMATS), required=True)
@_filter_options
@click.option(
    "--limit",
    type=click.IntRange(1, listing.MAX_ROWS),
    default=listing.MAX_ROWS,
    show_default=True,
    help="at most this many, newest first",
)
@db_option
def deliveries_export(fmt: str, limit: int, db_path: Path | None, **given: str | None) -> None:
    """Write the deliveries the filters select to stdout: CSV with a header row, or a JSON
    array, of the list's fields (no bodies)."""
    filters = _filters(**given)

    async def export(db: Database) -> None:
        rows = store_deliveries.aevery(db, filters, limit)
        async for chunk in listing.chunks(rows, fmt):
            click.echo(chunk, nl=False)

    read(load_settings(db_path=db_path), export)


@deliveries_group.command("show")
@click.argument("delivery_id")
@db_option
@json_option
def deliveries_show(delivery_id: str, db_path: Path | None, as_json: bool) -> None:
    """Show one delivery with its headers, body and attempts."""
    detail = read(load_settings(db_path=db_path), lambda db: store_deliveries.aget(db, delivery_id))
    data = detail.to_json()
    if as_json:
        print_json(data)
        return
    for key in (
        "id",
        "plugin",
        "instance",
        "route",
        "provider_delivery_id",
        "conversation",
        "state",
        "attempts",
        "last_error",
        "content_type",
        "size",
    ):
        click.echo(f"{key}: {cell(data.get(key), 200)}")
    click.echo(f"received_at: {when(data['received_at'])}")
    click.echo(f"delivered_at: {when(data['delivered_at'])}")
    for attempt in data["attempt_log"]:
        click.echo(
            f"attempt {attempt['attempt']}: {attempt['outcome']} "
            f"status={cell(attempt['status_code'])} error={cell(attempt['error'])} "
            f"response={cell(attempt['response'])}"
        )
    click.echo("headers: " + json.dumps(data["headers"]))
    if "body" in data:
        click.echo("body: " + data["body"])
    elif "body_base64" in data:
        click.echo("body (base64): " + data["body_base64"])
    else:
        click.echo("body: (pruned after delivery)")


@deliveries_group.command("replay")
@click.argument("delivery_id")
@db_option
@json_option
def deliveries_replay(delivery_id: str, db_path: Path | None, as_json: bool) -> None:
    """Send a delivered or dead delivery again, with the same webhook-id."""
    settings = load_settings(db_path=db_path)
    with database(settings) as db:
        db.write(store_replay.replay(delivery_id, now()))
    wake_workers(settings)
    if as_json:
        print_json({"id": delivery_id, "state": "pending"})
    else:
        click.echo(f"replaying {delivery_id}")


def _time(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else check_time(f"--{param.name}", value)
    except InvalidInput as exc:
        raise BadInput(str(exc)) from exc


@click.command("replay")
@click.option(
    "--since", required=True, callback=_time, help="received at or after: unix seconds or ISO 8601"
)
@click.option("--until", callback=_time, help="received before: unix seconds or ISO 8601")
@click.option("--plugin", help="only this plugin")
@click.option("--instance", help="only this instance")
@click.option("--state", type=click.Choice(store_replay.REPLAYABLE), help="only this state")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="at most this many (default: all)"
)
@progress_option
@yes_option
@db_option
@json_option
def replay_command(
    since: float,
    until: float | None,
    plugin: str | None,
    instance: str | None,
    state: str | None,
    limit: int | None,
    show_progress: bool | None,
    yes: bool,
    db_path: Path | None,
    as_json: bool,
) -> None:
    """Send the deliveries received in a time range again, oldest first, in bounded batches.

    Delivered and dead ones (not pending ones, nor those whose body was pruned) go to the back
    of their lanes with the same webhook-id and a fresh retry budget.
    """
    selection = store_replay.Range(since, until, plugin, instance, state)
    settings = load_settings(db_path=db_path)
    confirm(
        f"Send the deliveries received from {when(since)} to {when(until) if until else 'now'} "
        "to their targets again?",
        yes,
    )

    async def run(db: Database) -> store_replay.RangeResult:
        await db.aopen()
        try:
            return await store_replay.areplay_range(db, selection, limit, now, bar.report)
        finally:
            await db.aclose()

    with database(settings) as db, Progress("replaying", show_progress) as bar:
        result = asyncio.run(run(db))
    if result.replayed:
        wake_workers(settings)
    if as_json:
        print_json(result.to_json())
    else:
        click.echo(
            f"replayed: {result.replayed}, remaining: {result.remaining}, "
            f"pruned (not replayable): {result.pruned}"
        )


@click.group("dlq")
def dlq_group() -> None:
    """Read, redrive and discard dead letters."""


@dlq_group.command("list")
@click.option("--plugin", help="only this plugin")
@click.option("--instance", help="only this instance")
@limit_option
@db_option
@json_option
def dlq_list(
    plugin: str | None, instance: str | None, limit: int, db_path: Path | None, as_json: bool
) -> None:
    """List open dead letters, oldest first."""
    selection = store_dead_letters.Selection(plugin, instance)
    page = read(
        load_settings(db_path=db_path),
        lambda db: store_dead_letters.alist_page(db, selection, None, limit),
    )
    if as_json:
        print_json({"items": [x.to_json() for x in page.items], "next_cursor": page.next_cursor})
        return
    table(
        ["ID", "DELIVERY", "PLUGIN", "INSTANCE", "ATTEMPTS", "CREATED", "LAST ERROR"],
        [
            [
                x.id,
                x.delivery,
                x.plugin_id,
                x.instance_id,
                x.attempts,
                when(x.created_at),
                x.last_error,
            ]
            for x in page.items
        ],
    )
    more(page.next_cursor)


@dlq_group.command("redrive")
@click.option("--plugin", help="only this plugin")
@click.option("--instance", help="only this instance")
@click.option("--id", "ids", multiple=True, help="only this dead letter (repeatable)")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="redrive at most this many (default: all)",
)
@progress_option
@db_option
@json_option
def dlq_redrive(
    plugin: str | None,
    instance: str | None,
    ids: tuple[str, ...],
    limit: int | None,
    show_progress: bool | None,
    db_path: Path | None,
    as_json: bool,
) -> None:
    """Send dead letters back to the outbox, in bounded batches."""
    selection = store_dead_letters.Selection(plugin, instance, list(ids) if ids else None)
    settings = load_settings(db_path=db_path)
    with (
        database(settings) as db,
        Progress("redriving", show_progress) as bar,
    ):
        total, remaining = asyncio.run(
            store_dead_letters.aredrive(db, selection, limit, now, bar.report)
        )
    if total:
        wake_workers(settings)
    if as_json:
        print_json({"redriven": total, "remaining": remaining})
    else:
        click.echo(f"redriven: {total}, remaining: {remaining}")


@dlq_group.command("discard")
@click.argument("dead_letter_id")
@yes_option
@db_option
@json_option
def dlq_discard(dead_letter_id: str, yes: bool, db_path: Path | None, as_json: bool) -> None:
    """Drop one dead letter for good."""
    settings = load_settings(db_path=db_path)
    confirm(f"Discard {dead_letter_id} for good? It can no longer be redriven.", yes)
    with database(settings) as db:
        db.write(store_dead_letters.discard(dead_letter_id))
    wake_workers(settings)  # a strict lane the dead letter held back moves on
    if as_json:
        print_json({"discarded": dead_letter_id})
    else:
        click.echo(f"discarded {dead_letter_id}")
