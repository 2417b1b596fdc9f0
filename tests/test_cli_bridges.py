"""``ingress-box bridges add|list|show|remove`` on a real database file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clirun import ok, run
from conftest import T0
from live import insert_instance

from ingress_box.config import DatabaseUrl
from ingress_box.store import instances as store_instances
from ingress_box.store import mappings as store_mappings
from ingress_box.store import open_database

pytestmark = pytest.mark.both_stores

API_KEY = "gateway-api-key-0123456789"
API_TOKEN = "chatwoot-api-token-0123456789"


def add_args(
    db_path: Path | DatabaseUrl, bridge_id: str = "shop", kind: str = "waha", *extra: str
) -> list[str]:
    return [
        "bridges",
        "add",
        bridge_id,
        "--gateway-kind",
        kind,
        "--gateway-url",
        "http://gateway:3000",
        "--gateway-api-key",
        API_KEY,
        "--session",
        "default",
        "--chatwoot-url",
        "http://chatwoot:3000",
        "--account-id",
        "1",
        "--inbox-id",
        "7",
        "--api-token",
        API_TOKEN,
        "--db",
        str(db_path),
        *extra,
    ]


def add_json(db_path: Path | DatabaseUrl, *extra: str, kind: str = "waha") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(*add_args(db_path, "shop", kind, "--json", *extra)).stdout)
    return data


def instances_of(db_path: Path | DatabaseUrl) -> list[tuple[str, str, str]]:
    db = open_database(db_path).open()
    try:
        rows = db.read("SELECT plugin_id, instance_id, handler FROM instances ORDER BY plugin_id")
        return [(r[0], r[1], r[2]) for r in rows]
    finally:
        db.close()


def test_add_prints_the_urls_secrets_and_where_to_paste_them(db_path: Path | DatabaseUrl) -> None:
    """The two URLs and secrets once (a reminder on stderr), then the gateway's and Chatwoot's
    setup; the instances exist with the bridge handler."""
    result = ok(*add_args(db_path, "shop", "gowa"))
    out = result.stdout
    assert "gateway webhook url:  http://127.0.0.1:8080/ingress/gowa/shop/events" in out
    assert "WHATSAPP_WEBHOOK=http://127.0.0.1:8080/ingress/gowa/shop/events" in out
    secret = next(
        line.split()[-1] for line in out.splitlines() if line.startswith("gateway secret")
    )
    assert f"WHATSAPP_WEBHOOK_SECRET={secret}" in out
    chatwoot = next(
        line.split()[-1] for line in out.splitlines() if line.startswith("chatwoot sec")
    )
    assert f"/ingress/chatwoot/shop/events?secret={chatwoot}" in out
    assert "Settings > Integrations > Webhooks" in out
    assert "not shown again" in result.stderr
    assert API_KEY not in out and API_TOKEN not in out
    assert instances_of(db_path) == [("chatwoot", "shop", "bridge"), ("gowa", "shop", "bridge")]


def test_add_json_matches_the_admin_api_shape(db_path: Path | DatabaseUrl) -> None:
    """--json is the admin API's 201 body: masked credentials, the secrets, URLs and setup."""
    made = add_json(db_path, "--gateway-secret", "gw-secret", "--chatwoot-secret", "cw-secret")
    assert made["gateway"] == {
        "kind": "waha",
        "url": "http://gateway:3000",
        "session": "default",
        "api_key": "****" + API_KEY[-4:],
        "secret": "gw-secret",
    }
    assert made["chatwoot"]["secret"] == "cw-secret"
    assert made["chatwoot_ingress_url"].endswith("/ingress/chatwoot/shop/events?secret=cw-secret")
    assert any('"hmac": {"key": "gw-secret"}' in line for line in made["setup"])


def test_add_uses_the_public_url(db_path: Path | DatabaseUrl) -> None:
    """The printed URLs start with INGRESS_BOX_PUBLIC_URL when it is set."""
    env = {"INGRESS_BOX_PUBLIC_URL": "https://box.example"}
    made = json.loads(ok(*add_args(db_path, "shop", "waha", "--json"), env=env).stdout)
    assert made["gateway_ingress_url"] == "https://box.example/ingress/waha/shop/events"


@pytest.mark.parametrize(
    "extra",
    [["--gateway-secret", ""], ["--gateway-url", "ftp://x"], ["--account-id", "0"]],
    ids=["empty-secret", "bad-url", "zero-account"],
)
def test_add_with_a_bad_value_exits_2_and_creates_nothing(
    db_path: Path | DatabaseUrl, extra: list[str]
) -> None:
    """The admin API's checks: one line on stderr, exit 2, nothing made."""
    result = run(*add_args(db_path, "shop", "waha", *extra))
    assert result.exit_code == 2, result.output
    assert isinstance(db_path, Path) and not db_path.exists() or instances_of(db_path) == []


def test_add_with_a_bad_id_or_kind_exits_2(db_path: Path | DatabaseUrl) -> None:
    """An id outside the instance pattern, or an unknown gateway kind."""
    assert run(*add_args(db_path, "shop/1")).exit_code == 2
    assert run(*add_args(db_path, "shop", "twilio")).exit_code == 2


def test_add_when_the_chatwoot_instance_exists_exits_1_and_creates_nothing(
    db_path: Path | DatabaseUrl,
) -> None:
    """chatwoot/<id> is taken: exit 1, no bridge, no gateway instance."""
    db = open_database(db_path).open()
    insert_instance(db, "chatwoot", "shop")
    db.close()
    result = run(*add_args(db_path))
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert instances_of(db_path) == [("chatwoot", "shop", "forward")]
    assert run("bridges", "show", "shop", "--db", str(db_path)).exit_code == 1


def test_list_shows_a_table_without_secrets(db_path: Path | DatabaseUrl) -> None:
    """One row per bridge: gateway kind, session, inbox, both instances, mapping count."""
    made = add_json(db_path)
    db = open_database(db_path).open()
    db.write(
        store_mappings.upsert(store_mappings.Upsert("chatwoot", "shop", "default", "c", "1"), T0)
    )
    db.close()
    out = ok("bridges", "list", "--db", str(db_path)).stdout
    header, row = out.splitlines()
    assert header.split() == [
        "ID",
        "GATEWAY",
        "SESSION",
        "CHATWOOT",
        "INBOX",
        "INSTANCES",
        "MAPPINGS",
    ]
    assert row.split() == ["shop", "waha", "default", "1/7", "waha/shop,", "chatwoot/shop", "1"]
    for secret in (made["gateway"]["secret"], made["chatwoot"]["secret"], API_KEY, API_TOKEN):
        assert secret not in out


def test_list_and_show_json_mask_secrets(db_path: Path | DatabaseUrl) -> None:
    """--json lists and shows the masked bridges with their URLs and mapping counts."""
    made = add_json(db_path)
    listed = ok("bridges", "list", "--db", str(db_path), "--json").stdout
    shown = json.loads(ok("bridges", "show", "shop", "--db", str(db_path), "--json").stdout)
    for secret in (made["gateway"]["secret"], made["chatwoot"]["secret"], API_KEY, API_TOKEN):
        assert secret not in listed and secret not in json.dumps(shown)
    assert [b["id"] for b in json.loads(listed)["items"]] == ["shop"]
    assert shown["chatwoot_ingress_url"] == "http://127.0.0.1:8080/ingress/chatwoot/shop/events"
    assert [i["plugin"] for i in shown["instances"]] == ["waha", "chatwoot"]
    assert shown["mappings"] == 0


def test_show_prints_the_instances_and_masks_credentials(db_path: Path | DatabaseUrl) -> None:
    """The text form names both instances with their URLs; the credentials masked."""
    add_json(db_path)
    out = ok("bridges", "show", "shop", "--db", str(db_path)).stdout
    assert "instance:        waha/shop http://127.0.0.1:8080/ingress/waha/shop/events" in out
    assert "gateway api key: ****" + API_KEY[-4:] in out
    assert API_TOKEN not in out


def test_show_of_an_unknown_bridge_exits_1(db_path: Path | DatabaseUrl) -> None:
    """No such bridge: exit 1 with one line."""
    add_json(db_path)
    result = run("bridges", "show", "nope", "--db", str(db_path))
    assert result.exit_code == 1 and "no bridge nope" in result.output


def test_remove_asks_first_and_removes_both_instances(db_path: Path | DatabaseUrl) -> None:
    """Without --yes it asks; no keeps everything, yes removes the bridge and its instances."""
    add_json(db_path)
    refused = run("bridges", "remove", "shop", "--db", str(db_path), input="n\n")
    assert refused.exit_code == 1
    assert len(instances_of(db_path)) == 2
    removed = run("bridges", "remove", "shop", "--db", str(db_path), input="y\n")
    assert removed.exit_code == 0, removed.output
    assert "removed bridge shop (waha/shop, chatwoot/shop)" in removed.stdout
    assert instances_of(db_path) == []


def test_remove_yes_json_answers_the_removed_bridge(db_path: Path | DatabaseUrl) -> None:
    """--yes --json removes without asking and prints the bridge, masked."""
    add_json(db_path)
    db = open_database(db_path).open()
    insert_instance(db, "generic", "shop")
    db.close()
    out = ok("bridges", "remove", "shop", "--yes", "--json", "--db", str(db_path)).stdout
    assert json.loads(out)["removed"]["gateway"]["api_key"] == "****" + API_KEY[-4:]
    assert instances_of(db_path) == [("generic", "shop", "forward")]
    again = run("bridges", "remove", "shop", "--yes", "--db", str(db_path))
    assert again.exit_code == 1 and "not found" in again.output


def test_a_bridge_instance_keeps_its_secret_in_the_store(db_path: Path | DatabaseUrl) -> None:
    """The secret printed is the one the instance verifies with."""
    made = add_json(db_path)
    db = open_database(db_path).open()
    try:
        inst = store_instances.get(db, "chatwoot", "shop")
    finally:
        db.close()
    assert inst is not None and inst.secret == made["chatwoot"]["secret"]
