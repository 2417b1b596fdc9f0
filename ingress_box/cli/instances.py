"""``ingress-box instances``: add, list, rotate and remove plugin instances on the database file.

``add`` and ``rotate`` print the secrets they make, once: to stdout, with a reminder on stderr
that they are not shown again. ``list`` masks them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import instance_rules
from ..config import load_settings
from ..errors import InvalidInput, NotFound
from ..plugins import load_registry
from ..store import Database
from ..store import instances as store_instances
from ..store.instances import LANE_POLICIES
from .common import (
    FiniteFloat,
    database,
    db_option,
    json_option,
    now,
    plugins_dir_option,
    print_json,
    public_base,
    read,
    table,
    when,
)


@click.group("instances")
def instances_group() -> None:
    """Add, list, rotate and remove plugin instances."""


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
    created = instance_rules.created_json(registry, inst, shown, public_base(settings))
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

    async def every(db: Database) -> list[store_instances.Instance]:
        found: list[store_instances.Instance] = []
        cursor: str | None = None
        while True:
            page = await store_instances.alist_page(db, plugin, cursor, 1000)
            found.extend(page.items)
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    items = read(settings, every)
    if as_json:
        print_json({"items": [inst.to_json() for inst in items]})
        return
    table(
        ["PLUGIN", "INSTANCE", "ENABLED", "HANDLER", "LANES", "TARGET"],
        [
            [
                i.plugin_id,
                i.instance_id,
                "yes" if i.enabled else "no",
                i.handler,
                i.lane_policy,
                i.shown_target_url,
            ]
            for i in items
        ],
    )


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
