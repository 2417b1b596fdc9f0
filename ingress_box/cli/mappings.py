"""``ingress-box mappings``: conversation mappings on the database file (list, set, delete, state).

Registered on :data:`ingress_box.cli.main` by :mod:`ingress_box.cli`. Like the other
operator commands these open the SQLite file directly, so they work while ``serve`` runs.
A conflict (the conversation is bound to another chat) exits 1 and names that chat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .. import mapping_rules
from ..config import load_settings
from ..errors import InvalidInput
from ..plugins import load_registry
from ..store import mappings as store
from ..store.mappings import STATES, ConversationMapping
from .common import (
    confirm,
    database,
    db_option,
    json_option,
    limit_option,
    more,
    now,
    plugins_dir_option,
    print_json,
    reading,
    table,
    when,
    yes_option,
)


def _metadata(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"--metadata is not JSON: {exc}") from exc
    return mapping_rules.check_metadata(value)


def _show(mapping: ConversationMapping, as_json: bool, verb: str) -> None:
    if as_json:
        print_json(mapping.to_json())
    else:
        click.echo(
            f"{verb} mapping {mapping.id}: {mapping.plugin_id}/{mapping.instance_id} "
            f"{mapping.session}/{mapping.chat} <-> {mapping.conversation} "
            f"({mapping.state})"
        )


@click.group("mappings")
def mappings_group() -> None:
    """List, set and delete conversation mappings and change their handover state."""


@mappings_group.command("list")
@click.option("--plugin", help="only this plugin")
@click.option("--instance", help="only this instance")
@click.option("--session", help="only this session")
@click.option("--chat", help="only this chat")
@click.option("--conversation", help="only this conversation")
@click.option("--state", type=click.Choice(STATES), help="only this handover state")
@limit_option
@db_option
@json_option
def mappings_list(
    plugin: str | None,
    instance: str | None,
    session: str | None,
    chat: str | None,
    conversation: str | None,
    state: str | None,
    limit: int,
    db_path: Path | None,
    as_json: bool,
) -> None:
    """List mappings, oldest first."""
    selection = store.Filter(plugin, instance, session, chat, conversation, state)
    with reading(load_settings(db_path=db_path)) as db:
        page = store.list_page(db, selection, None, limit)
    if as_json:
        print_json({"items": [m.to_json() for m in page.items], "next_cursor": page.next_cursor})
        return
    table(
        ["ID", "PLUGIN", "INSTANCE", "SESSION", "CHAT", "CONVERSATION", "STATE", "UPDATED"],
        [
            [
                m.id,
                m.plugin_id,
                m.instance_id,
                m.session,
                m.chat,
                m.conversation,
                m.state,
                when(m.updated_at),
            ]
            for m in page.items
        ],
    )
    more(page.next_cursor)


@mappings_group.command("set")
@click.argument("plugin")
@click.argument("instance")
@click.option("--session", required=True, help="the gateway session of the chat")
@click.option("--chat", required=True, help="the chat (e.g. a WhatsApp id)")
@click.option("--conversation", required=True, help="the provider's conversation id")
@click.option("--state", type=click.Choice(STATES), help="handover state (kept when not given)")
@click.option("--metadata", "metadata_json", help="a JSON object (kept when not given)")
@db_option
@plugins_dir_option
@json_option
def mappings_set(
    plugin: str,
    instance: str,
    session: str,
    chat: str,
    conversation: str,
    state: str | None,
    metadata_json: str | None,
    db_path: Path | None,
    plugins_dir: Path | None,
    as_json: bool,
) -> None:
    """Bind a chat to a conversation (re-pointing the chat if it had another one)."""
    settings = load_settings(db_path=db_path, plugins_dir=plugins_dir)
    upsert = mapping_rules.upsert_of(
        load_registry(settings.plugins_dir),
        {
            "plugin": plugin,
            "instance": instance,
            "session": session,
            "chat": chat,
            "conversation": conversation,
            "state": state,
            "metadata": _metadata(metadata_json),
        },
    )
    with database(settings, create=True) as db:
        mapping, created = db.write(store.upsert(upsert, now()))
    _show(mapping, as_json, "created" if created else "updated")


@mappings_group.command("delete")
@click.argument("mapping_id", type=click.IntRange(1, 2**63 - 1))
@yes_option
@db_option
@json_option
def mappings_delete(mapping_id: int, yes: bool, db_path: Path | None, as_json: bool) -> None:
    """Delete a mapping, freeing its conversation."""
    confirm(f"Delete mapping {mapping_id}? Its conversation is then bound to no chat.", yes)
    with database(load_settings(db_path=db_path)) as db:
        db.write(store.delete(mapping_id))
    if as_json:
        print_json({"deleted": mapping_id})
    else:
        click.echo(f"deleted mapping {mapping_id}")


@mappings_group.command("state")
@click.argument("mapping_id", type=click.IntRange(1, 2**63 - 1))
@click.argument("state", type=click.Choice(STATES))
@click.option("--metadata", "metadata_json", help="replace the metadata with this JSON object")
@db_option
@json_option
def mappings_state(
    mapping_id: int, state: str, metadata_json: str | None, db_path: Path | None, as_json: bool
) -> None:
    """Change who answers a conversation: bot, human, or closed."""
    with database(load_settings(db_path=db_path)) as db:
        mapping = db.write(store.set_state(mapping_id, state, _metadata(metadata_json), now()))
    _show(mapping, as_json, "changed")
