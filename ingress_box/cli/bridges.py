"""``ingress-box bridges``: add, list, show and remove bridges on the database file.

``add`` prints the two webhook secrets and URLs once, and what to paste where in the gateway and
in Chatwoot, with a reminder on stderr that the secrets are not shown again. The other commands
mask them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import bridge_rules
from ..config import load_settings
from ..errors import NotFound
from ..plugins import load_registry
from ..store import Database
from ..store import bridges as store
from ..store.bridges import GATEWAY_KINDS, Bridge
from .common import (
    command_options,
    database,
    db_option,
    json_option,
    now,
    plugins_dir_option,
    print_json,
    read,
    table,
)

address_options = command_options("bridges")


@click.group("bridges")
def bridges_group() -> None:
    """Join a WhatsApp gateway session to a Chatwoot API inbox."""


@bridges_group.command("add")
@click.argument("bridge_id", metavar="ID")
@click.option("--gateway-kind", required=True, type=click.Choice(GATEWAY_KINDS))
@click.option("--gateway-url", required=True, help="the gateway's API base URL")
@click.option("--gateway-api-key", required=True, help="the gateway's API key")
@click.option("--session", required=True, help="the gateway's session (Evolution: instance)")
@click.option("--chatwoot-url", required=True, help="Chatwoot's base URL")
@click.option("--account-id", required=True, type=int, help="the Chatwoot account")
@click.option("--inbox-id", required=True, type=int, help="the Chatwoot API inbox")
@click.option("--api-token", required=True, help="a Chatwoot user's or agent bot's API token")
@click.option("--gateway-secret", help="the gateway's webhook secret (generated if not given)")
@click.option(
    "--chatwoot-secret",
    help="the Chatwoot webhooks' secret, e.g. an account webhook's (generated if not given)",
)
@db_option
@plugins_dir_option
@address_options
@json_option
def bridges_add(
    bridge_id: str,
    gateway_kind: str,
    gateway_url: str,
    gateway_api_key: str,
    session: str,
    chatwoot_url: str,
    account_id: int,
    inbox_id: int,
    api_token: str,
    gateway_secret: str | None,
    chatwoot_secret: str | None,
    db_path: Path | None,
    plugins_dir: Path | None,
    as_json: bool,
    **address: Any,
) -> None:
    """Create a bridge and its two instances; print the secrets (shown only this once)."""
    settings = load_settings(db_path=db_path, plugins_dir=plugins_dir, **address)
    gateway: dict[str, object] = {
        "kind": gateway_kind,
        "url": gateway_url,
        "api_key": gateway_api_key,
        "session": session,
    }
    chatwoot: dict[str, object] = {
        "url": chatwoot_url,
        "account_id": account_id,
        "inbox_id": inbox_id,
        "api_token": api_token,
    }
    if gateway_secret is not None:
        gateway["secret"] = gateway_secret
    if chatwoot_secret is not None:
        chatwoot["secret"] = chatwoot_secret
    body = {"id": bridge_id, "gateway": gateway, "chatwoot": chatwoot}
    registry = load_registry(settings.plugins_dir)
    bridge, instances, shown = bridge_rules.new_bridge(registry, body, now())
    with database(settings, create=True) as db:
        db.write(store.insert(bridge, instances))
    created = bridge_rules.created_json(bridge, shown, settings.base_url)
    if as_json:
        print_json(created)
        return
    (gateway_plugin, _), _ = bridge.instances
    click.echo(f"created bridge {bridge.id} ({gateway_plugin}/{bridge.id}, chatwoot/{bridge.id})")
    click.echo(f"gateway webhook url:  {created['gateway_ingress_url']}")
    click.echo(f"gateway secret:       {shown['gateway']}")
    click.echo(f"chatwoot webhook url: {created['chatwoot_ingress_url']}")
    click.echo(f"chatwoot secret:      {shown['chatwoot']}")
    click.echo("")
    for line in created["setup"]:
        click.echo(line)
    click.echo("Store these now: the secrets are not shown again.", err=True)


@bridges_group.command("list")
@db_option
@address_options
@json_option
def bridges_list(db_path: Path | None, as_json: bool, **address: Any) -> None:
    """List bridges (secrets masked)."""
    settings = load_settings(db_path=db_path, **address)

    async def load(db: Database) -> tuple[list[Bridge], dict[str, int]]:
        return await store.aevery(db), await store.amapping_counts(db)

    bridges, counts = read(settings, load)
    base = settings.base_url
    if as_json:
        items = [bridge_rules.read_json(b, base, counts.get(b.id, 0)) for b in bridges]
        print_json({"items": items})
        return
    table(
        ["ID", "GATEWAY", "SESSION", "CHATWOOT INBOX", "INSTANCES", "MAPPINGS"],
        [
            [
                b.id,
                b.gateway.kind,
                b.gateway.session,
                f"{b.chatwoot.account_id}/{b.chatwoot.inbox_id}",
                ", ".join(f"{p}/{i}" for p, i in b.instances),
                counts.get(b.id, 0),
            ]
            for b in bridges
        ],
    )


@bridges_group.command("show")
@click.argument("bridge_id", metavar="ID")
@db_option
@address_options
@json_option
def bridges_show(bridge_id: str, db_path: Path | None, as_json: bool, **address: Any) -> None:
    """Show one bridge (secrets masked), its webhook URLs and its mapping count."""
    settings = load_settings(db_path=db_path, **address)

    async def load(db: Database) -> tuple[Bridge | None, dict[str, int]]:
        return await store.aget(db, bridge_id), await store.amapping_counts(db)

    bridge, counts = read(settings, load)
    if bridge is None:
        raise NotFound(f"no bridge {bridge_id}")
    shown = bridge_rules.read_json(bridge, settings.base_url, counts.get(bridge.id, 0))
    if as_json:
        print_json(shown)
        return
    g, c = shown["gateway"], shown["chatwoot"]
    click.echo(f"bridge:          {bridge.id}")
    click.echo(f"gateway:         {g['kind']} {g['url']} session {g['session']}")
    click.echo(f"gateway api key: {g['api_key']}")
    click.echo(f"chatwoot:        {c['url']} account {c['account_id']} inbox {c['inbox_id']}")
    click.echo(f"chatwoot token:  {c['api_token']}")
    for item in shown["instances"]:
        click.echo(f"instance:        {item['plugin']}/{item['instance']} {item['ingress_url']}")
    click.echo(f"mappings:        {shown['mappings']}")


@bridges_group.command("remove")
@click.argument("bridge_id", metavar="ID")
@click.option("--yes", is_flag=True, help="do not ask first")
@db_option
@json_option
def bridges_remove(bridge_id: str, yes: bool, db_path: Path | None, as_json: bool) -> None:
    """Delete a bridge and its two instances (their ingress URLs answer 404 from now on)."""
    settings = load_settings(db_path=db_path)
    with database(settings) as db:
        if not yes:
            if store.get(db, bridge_id) is None:  # say so before asking
                raise NotFound(f"no bridge {bridge_id}")
            # On stderr, so that stdout stays the command's answer (--json).
            click.confirm(
                f"remove bridge {bridge_id} and both its instances?", abort=True, err=True
            )
        bridge: Bridge = db.write(store.delete(bridge_id))
    if as_json:
        print_json({"removed": bridge.to_json()})
        return
    (gateway_plugin, _), _ = bridge.instances
    click.echo(f"removed bridge {bridge.id} ({gateway_plugin}/{bridge.id}, chatwoot/{bridge.id})")
