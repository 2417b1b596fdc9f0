"""``ingress-box instances``: add, list, show, set, test, rotate and remove plugin instances on
the database file, and list and admit the requests each one refused for their signature or
timestamp.

``add`` and ``rotate`` print the secrets they make, once: to stdout, with a reminder on stderr
that they are not shown again. ``list`` and ``show`` mask them and show each one's health
(``show --reveal-verify-token`` reads back a GET challenge's token, which the provider's form
asks for again). Ingress URLs are built from the same settings ``serve`` listens on
(``--public-url``, else ``--host``/``--port``). ``test`` sends a test event through the outbox
and waits for its first attempt. ``admit`` runs the same pipeline as the server, in this
process, on the file (a worker notices the delivery it commits).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from .. import instance_health, instance_rules, probe, quarantine
from ..config import Settings, load_settings
from ..errors import InvalidInput, NotFound
from ..ingress import Ingress
from ..instance_health import Health
from ..plugins import Registry, load_registry
from ..store import Database
from ..store import deliveries as store_deliveries
from ..store import instances as store_instances
from ..store import probes as store_probes
from ..store import rejections as store_rejections
from ..store.instances import LANE_POLICIES, Instance
from ..store.pages import Page
from ..worker import wake_workers
from .common import (
    Failed,
    FiniteFloat,
    command_options,
    confirm,
    database,
    db_option,
    json_option,
    limit_option,
    more,
    now,
    plugins_dir_option,
    print_json,
    read,
    table,
    warn,
    when,
    yes_option,
)

address_options = command_options("instances")


@click.group("instances")
def instances_group() -> None:
    """Add, list, show, change, test, rotate and remove plugin instances."""


def _config(config_json: str | None) -> dict[str, object]:
    if config_json is None:
        return {}
    try:
        return {"config": json.loads(config_json)}
    except ValueError as exc:
        raise InvalidInput(f"--config is not JSON: {exc}") from exc


@instances_group.command("add")
@click.argument("plugin")
@click.argument("instance")
@click.option("--target-url", help="where the forward handler POSTs deliveries")
@click.option("--secret", help="the provider's signing secret (generated if not given)")
@click.option(
    "--generate-secret",
    is_flag=True,
    help="generate the secret even for a plugin whose provider issues it",
)
@click.option("--verify-token", help="token of a GET challenge (generated if not given)")
@click.option("--session", help="session this instance belongs to")
@click.option(
    "--lane-policy", type=click.Choice(LANE_POLICIES), help="progress (default) or strict"
)
@click.option("--handler", help="handler name or package.module:function (default: the plugin's)")
@click.option("--config", "config_json", help="handler config, a JSON object")
@click.option("--disabled", is_flag=True, help="create it disabled")
@db_option
@plugins_dir_option
@address_options
@json_option
def instances_add(
    plugin: str,
    instance: str,
    generate_secret: bool,
    config_json: str | None,
    disabled: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Create an instance and print its secrets (shown only this once).

    Where the provider issues the secret (``ingress-box plugins`` says which), pass it with
    --secret: a generated one would never verify. --generate-secret makes one anyway.
    """
    names = ("target_url", "secret", "verify_token", "session", "lane_policy", "handler")
    fields = {k: flags.pop(k) for k in names}
    settings = load_settings(**flags)
    registry = load_registry(settings.plugins_dir)
    found = instance_rules.plugin_of(registry, plugin)
    if found.secret_issued_by_provider and fields["secret"] is None and not generate_secret:
        raise InvalidInput(
            instance_rules.secret_needed(found) + ": pass it with --secret (or --generate-secret)"
        )
    given: dict[str, object] = {k: v for k, v in fields.items() if v is not None}
    given |= _config(config_json)
    if disabled:
        given["enabled"] = False
    inst, shown = instance_rules.new_instance(registry, plugin, instance, given, now())
    with database(settings, create=True) as db:
        db.write(store_instances.insert(inst))
    created = instance_rules.created_json(
        registry, inst, shown, settings.base_url, secret_given="secret" in given or generate_secret
    )
    for line in created["warnings"]:
        warn(line)
    if as_json:
        print_json(created)
        return
    click.echo(f"created {inst.plugin_id}/{inst.instance_id}")
    for name, url in created["ingress_urls"].items():
        click.echo(f"ingress url ({name}): {url}")
    click.echo(f"secret:          {shown['secret']}")
    click.echo(f"verify token:    {shown['verify_token']}")
    click.echo(f"outbound secret: {shown['outbound_secret']}")
    click.echo("Store these now: the secrets are not shown again.", err=True)


def _shown(registry: Registry, settings: Settings, inst: Instance) -> dict[str, Any]:
    """An instance as the admin API reads it, with its ingress URLs."""
    urls = instance_rules.ingress_urls(registry, inst, settings.base_url)
    return {**inst.to_json(), "ingress_urls": urls}


@instances_group.command("list")
@click.option("--plugin", help="only this plugin's instances")
@db_option
@plugins_dir_option
@address_options
@json_option
def instances_list(plugin: str | None, as_json: bool, **flags: Any) -> None:
    """List instances (secrets masked) with their ingress URLs."""
    settings = load_settings(**flags)
    registry = load_registry(settings.plugins_dir)

    async def every(db: Database) -> list[tuple[Instance, Health]]:
        found: list[tuple[Instance, Health]] = []
        cursor: str | None = None
        while True:
            page = await store_instances.alist_page(db, plugin, cursor, 1000)
            healths = await instance_health.aof(db, page.items, now())
            found.extend((i, healths[i.plugin_id, i.instance_id]) for i in page.items)
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    items = [(_shown(registry, settings, inst), h) for inst, h in read(settings, every)]
    if as_json:
        print_json({"items": [{**i, "health": h.to_json()} for i, h in items]})
        return
    table(
        ["PLUGIN", "INSTANCE", "ENABLED", "HANDLER", "LANES", "TARGET", "INGRESS URL", "HEALTH"],
        [
            [
                i["plugin"],
                i["instance"],
                "yes" if i["enabled"] else "no",
                i["handler"],
                i["lane_policy"],
                i["target_url"],
                " ".join(i["ingress_urls"].values()) or None,
                h.state,  # why: `instances show`
            ]
            for i, h in items
        ],
        width=120,  # URLs are what this table is for: not cut short
    )


def _found(db: Database, plugin: str, instance: str) -> Instance:
    inst = store_instances.get(db, plugin, instance)
    if inst is None:
        raise NotFound(f"no instance {plugin}/{instance}")
    return inst


def _print_item(data: dict[str, Any], found: Health | None = None) -> None:
    click.echo(f"{'instance:':<19}{data['plugin']}/{data['instance']}")
    click.echo(f"{'enabled:':<19}{'yes' if data['enabled'] else 'no'}")
    for key in ("handler", "lane_policy", "target_url", "session", "verify_token"):
        click.echo(f"{key + ':':<19}{'-' if data[key] is None else data[key]}")
    click.echo(f"{'config:':<19}{json.dumps(data['config'], sort_keys=True)}")
    for name, url in data["ingress_urls"].items():
        click.echo(f"{'ingress url:':<19}{url} ({name})")
    if found is None:
        return
    r = found.record
    for label, value in [
        ("health", found.state + (f" ({found.reason})" if found.reason else "")),
        ("last success", when(r.last_success_at)),
        ("last failure", when(r.last_failure_at)),
        ("failing since", when(r.failing_since)),
        ("failures in a row", r.consecutive_failures),
        ("pending", r.pending),
        ("dead letters open", r.dead_letters_open),
    ]:
        click.echo(f"{label + ':':<19}{value}")


@instances_group.command("show")
@click.argument("plugin")
@click.argument("instance")
@click.option(
    "--reveal-verify-token",
    is_flag=True,
    help="print the verify token of the GET challenge instead of its mask",
)
@db_option
@plugins_dir_option
@address_options
@json_option
def instances_show(
    plugin: str, instance: str, reveal_verify_token: bool, as_json: bool, **flags: Any
) -> None:
    """Show one instance (secrets masked) with its ingress URLs and its health."""
    settings = load_settings(**flags)
    registry = load_registry(settings.plugins_dir)
    with database(settings, readonly=True) as db:
        inst = _found(db, plugin, instance)
        (found,) = instance_health.of(db, [inst], now()).values()
    data = {**_shown(registry, settings, inst), "health": found.to_json()}
    if reveal_verify_token:
        data["verify_token"] = inst.verify_token
    if as_json:
        print_json(data)
    else:
        _print_item(data, found)


@instances_group.command("set")
@click.argument("plugin")
@click.argument("instance")
@click.option("--target-url", help="where the forward handler POSTs deliveries")
@click.option("--enabled/--disabled", default=None, help="take (or refuse) provider requests")
@click.option("--lane-policy", type=click.Choice(LANE_POLICIES), help="progress or strict")
@click.option("--handler", help="a registered handler or one a plugin declares")
@click.option("--session", help="session this instance belongs to")
@click.option("--verify-token", help="token of a GET challenge")
@click.option("--config", "config_json", help="handler config, a JSON object (replaces it)")
@db_option
@plugins_dir_option
@address_options
@json_option
def instances_set(
    plugin: str, instance: str, config_json: str | None, as_json: bool, **flags: Any
) -> None:
    """Change an instance, as PATCH /admin/instances/PLUGIN/INSTANCE does; secrets change
    with rotate."""
    names = ("target_url", "enabled", "lane_policy", "handler", "session", "verify_token")
    given: dict[str, object] = {k: v for k in names if (v := flags.pop(k)) is not None} | _config(
        config_json
    )
    if not given:
        raise InvalidInput("nothing to change: give at least one option (see --help)")
    settings = load_settings(**flags)
    registry = load_registry(settings.plugins_dir)
    changes = instance_rules.changes(registry, given)
    with database(settings) as db:
        inst: Instance = db.write(store_instances.update(plugin, instance, now(), **changes))
    data = _shown(registry, settings, inst)
    if as_json:
        print_json(data)
    else:
        click.echo(f"changed {plugin}/{instance}")
        _print_item(data)


@instances_group.command("test")
@click.argument("plugin")
@click.argument("instance")
@db_option
@json_option
def instances_test(plugin: str, instance: str, db_path: Path | None, as_json: bool) -> None:
    """Send a test event to the instance's target through the outbox and wait for its first
    attempt (exit 1 unless it was delivered)."""
    settings = load_settings(db_path=db_path)
    with database(settings) as db:
        inst = store_instances.get(db, plugin, instance)
        if inst is None:
            raise NotFound(f"no instance {plugin}/{instance}")
        event = probe.new_event(inst, now())
        db.write(store_probes.insert(event))
        wake_workers(settings)
        attempt = probe.wait_first_attempt(db, event.id, probe.wait_seconds(settings))
    result = probe.result_json(event.id, attempt)
    if as_json:
        print_json(result)
    elif attempt is None:
        click.echo(f"sent {event.id}; no attempt ended within {probe.wait_seconds(settings):g} s")
    else:
        status = f" (HTTP {attempt.status_code})" if attempt.status_code else ""
        click.echo(f"{event.id}: {attempt.outcome}{status} in {attempt.duration_ms:.0f} ms")
        if attempt.error:
            click.echo(f"error: {attempt.error}")
    if result["outcome"] != "delivered":
        click.get_current_context().exit(1)


@instances_group.command("rotate")
@click.argument("plugin")
@click.argument("instance")
@click.option("--secret", help="the new secret (generated if not given)")
@click.option(
    "--grace-seconds",
    type=FiniteFloat(min=0),
    default=None,
    help="how long the old secret keeps verifying (default: the rotation grace)",
)
@db_option
@plugins_dir_option
@json_option
def instances_rotate(
    plugin: str,
    instance: str,
    secret: str | None,
    grace_seconds: float | None,
    db_path: Path | None,
    plugins_dir: Path | None,
    as_json: bool,
) -> None:
    """Give an instance a new secret; the old one verifies until the grace window ends."""
    settings = load_settings(db_path=db_path, plugins_dir=plugins_dir)
    registry = load_registry(settings.plugins_dir)
    grace = settings.rotation_grace_hours * 3600 if grace_seconds is None else grace_seconds
    with database(settings) as db:
        current = store_instances.get(db, plugin, instance)
        if current is None:
            raise NotFound(f"no instance {plugin}/{instance}")
        op, new_secret = instance_rules.rotation(registry, current, secret, grace, now())
        inst: store_instances.Instance = db.write(op)
    if as_json:
        print_json(
            {
                **inst.to_json(),
                "secret": new_secret,
                "previous_secret_valid_until": inst.previous_secret_until,
            }
        )
        return
    click.echo(f"secret: {new_secret}")
    click.echo(f"previous secret valid until: {when(inst.previous_secret_until)}")
    click.echo("Store it now: the secret is not shown again.", err=True)


@instances_group.command("remove")
@click.argument("plugin")
@click.argument("instance")
@yes_option
@db_option
@json_option
def instances_remove(
    plugin: str, instance: str, yes: bool, db_path: Path | None, as_json: bool
) -> None:
    """Delete an instance (its ingress URL answers 404 from now on)."""
    confirm(f"Remove {plugin}/{instance}? Its provider's calls will answer 404.", yes)
    with database(load_settings(db_path=db_path)) as db:
        db.write(store_instances.delete(plugin, instance))
    if as_json:
        print_json({"removed": {"plugin": plugin, "instance": instance}})
    else:
        click.echo(f"removed {plugin}/{instance}")


@instances_group.command("rejections")
@click.argument("plugin")
@click.argument("instance")
@limit_option
@db_option
@json_option
def instances_rejections(
    plugin: str, instance: str, limit: int, db_path: Path | None, as_json: bool
) -> None:
    """List the requests an instance refused for their signature or timestamp, newest first."""
    settings = load_settings(db_path=db_path)

    async def kept(db: Database) -> Page[store_rejections.Listed]:
        if await store_instances.aget(db, plugin, instance) is None:
            raise NotFound(f"no instance {plugin}/{instance}")
        return await store_rejections.alist_page(db, plugin, instance, None, limit)

    page = read(settings, kept)
    if as_json:
        print_json({"items": [r.to_json() for r in page.items], "next_cursor": page.next_cursor})
        return
    table(
        ["ID", "RECEIVED", "ROUTE", "STATUS", "REASON"],
        [[r.id, when(r.received_at), r.route, r.status, r.reason] for r in page.items],
    )
    more(page.next_cursor)


@instances_group.command("admit")
@click.argument("plugin")
@click.argument("instance")
@click.argument("rejection_id", type=int)
@db_option
@plugins_dir_option
@json_option
def instances_admit(
    plugin: str,
    instance: str,
    rejection_id: int,
    db_path: Path | None,
    plugins_dir: Path | None,
    as_json: bool,
) -> None:
    """Verify a kept request again with the instance's secrets now, and accept it if it passes."""
    settings = load_settings(db_path=db_path, plugins_dir=plugins_dir)
    registry = load_registry(settings.plugins_dir)

    async def run(db: Database) -> dict[str, Any]:
        await db.aopen()
        try:
            kept = await store_rejections.aget(db, plugin, instance, rejection_id)
            answer = await quarantine.admit(Ingress(settings, db, registry, clock=now), kept)
            if answer.outcome not in quarantine.ADMITTED:
                raise Failed(f"not admitted: {answer.status} {answer.outcome}")
            assert answer.delivery_id is not None
            delivery = await store_deliveries.aget(db, answer.delivery_id)
        finally:
            await db.aclose()
        return {
            "admitted": True,
            "duplicate": answer.outcome == "duplicate",
            "delivery": delivery.to_json(),
        }

    with database(settings) as db:
        admitted = asyncio.run(run(db))
    if as_json:
        print_json(admitted)
        return
    delivery = admitted["delivery"]
    seen = " (a duplicate: already accepted)" if admitted["duplicate"] else ""
    click.echo(f"admitted as delivery {delivery['id']}, {delivery['state']}{seen}")
