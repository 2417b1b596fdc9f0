"""``ingress-box instances``: add, list, show, test, rotate and remove plugin instances on the
database file.

``add`` and ``rotate`` print the secrets they make, once: to stdout, with a reminder on stderr
that they are not shown again. ``list`` and ``show`` mask them and show each one's health.
``test`` sends a test event through the outbox and waits for its first attempt.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import instance_health, instance_rules, probe
from ..config import Settings, load_settings
from ..errors import InvalidInput, NotFound
from ..instance_health import Health
from ..plugins import load_registry
from ..store import Database
from ..store import instances as store_instances
from ..store import probes as store_probes
from ..store.instances import LANE_POLICIES
from ..worker import wake_workers
from .common import (
    FiniteFloat,
    database,
    db_option,
    json_option,
    now,
    plugins_dir_option,
    print_json,
    read,
    table,
    when,
)


def _public_base(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url
    host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


@click.group("instances")
def instances_group() -> None:
    """Add, list, show, test, rotate and remove plugin instances."""


@instances_group.command("add")
@click.argument("plugin")
@click.argument("instance")
@click.option("--target-url", help="where the forward handler POSTs deliveries")
@click.option("--secret", help="the provider's signing secret (generated if not given)")
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
@json_option
def instances_add(
    plugin: str,
    instance: str,
    config_json: str | None,
    disabled: bool,
    db_path: Path | None,
    plugins_dir: Path | None,
    as_json: bool,
    **fields: str | None,
) -> None:
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
    inst, shown = instance_rules.new_instance(registry, plugin, instance, given, now())
    with database(settings, create=True) as db:
        db.write(store_instances.insert(inst))
    created = instance_rules.created_json(registry, inst, shown, _public_base(settings))
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


@instances_group.command("list")
@click.option("--plugin", help="only this plugin's instances")
@db_option
@json_option
def instances_list(plugin: str | None, db_path: Path | None, as_json: bool) -> None:
    """List instances (secrets masked)."""
    settings = load_settings(db_path=db_path)

    async def every(db: Database) -> list[tuple[store_instances.Instance, Health]]:
        found: list[tuple[store_instances.Instance, Health]] = []
        cursor: str | None = None
        while True:
            page = await store_instances.alist_page(db, plugin, cursor, 1000)
            healths = await instance_health.aof(db, page.items, now())
            found.extend((i, healths[i.plugin_id, i.instance_id]) for i in page.items)
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    items = read(settings, every)
    if as_json:
        print_json({"items": [instance_health.with_health(i, h) for i, h in items]})
        return
    table(
        ["PLUGIN", "INSTANCE", "ENABLED", "HANDLER", "LANES", "TARGET", "HEALTH"],
        [
            [
                i.plugin_id,
                i.instance_id,
                "yes" if i.enabled else "no",
                i.handler,
                i.lane_policy,
                i.shown_target_url,
                h.state,  # why: `instances show`
            ]
            for i, h in items
        ],
    )


@instances_group.command("show")
@click.argument("plugin")
@click.argument("instance")
@db_option
@json_option
def instances_show(plugin: str, instance: str, db_path: Path | None, as_json: bool) -> None:
    """Show one instance (secrets masked) and its health."""
    settings = load_settings(db_path=db_path)

    async def one(db: Database) -> tuple[store_instances.Instance, Health]:
        inst = await store_instances.aget(db, plugin, instance)
        if inst is None:
            raise NotFound(f"no instance {plugin}/{instance}")
        (found,) = (await instance_health.aof(db, [inst], now())).values()
        return inst, found

    inst, found = read(settings, one)
    if as_json:
        print_json(instance_health.with_health(inst, found))
        return
    r = found.record
    for label, value in [
        ("instance", f"{inst.plugin_id}/{inst.instance_id}"),
        ("enabled", "yes" if inst.enabled else "no"),
        ("handler", inst.handler),
        ("target", inst.shown_target_url or "-"),
        ("lanes", inst.lane_policy),
        ("health", found.state + (f" ({found.reason})" if found.reason else "")),
        ("last success", when(r.last_success_at)),
        ("last failure", when(r.last_failure_at)),
        ("failing since", when(r.failing_since)),
        ("failures in a row", r.consecutive_failures),
        ("pending", r.pending),
        ("dead letters open", r.dead_letters_open),
    ]:
        click.echo(f"{label + ':':<19}{value}")


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
@db_option
def instances_remove(plugin: str, instance: str, db_path: Path | None) -> None:
    """Delete an instance (its ingress URL answers 404 from now on)."""
    with database(load_settings(db_path=db_path)) as db:
        db.write(store_instances.delete(plugin, instance))
    click.echo(f"removed {plugin}/{instance}")
