"""The bridges table: a bridge and its two instances are stored and removed together."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingress_box.errors import AlreadyExists, NotFound
from ingress_box.store import Database, bridges, instances
from ingress_box.store.instances import Instance

NOW = 1_700_000_000.0


def shop(bridge_id: str = "shop") -> bridges.Bridge:
    return bridges.Bridge(
        id=bridge_id,
        gateway=bridges.Gateway("waha", "http://127.0.0.1:3000", "default", "waha-api-key-123456"),
        chatwoot=bridges.Chatwoot("http://127.0.0.1:3001", 1, 7, "chatwoot-token-123456"),
        created_at=NOW,
        options={"groups": "skip"},
    )


def its_instances(bridge: bridges.Bridge) -> list[Instance]:
    return [
        Instance(plugin, instance, "s" * 32, "whsec_x", NOW, NOW, handler="bridge")
        for plugin, instance in bridge.instances
    ]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    opened = Database(tmp_path / "box.db").open()
    yield opened
    opened.close()


def test_a_bridge_comes_back_as_stored_with_its_two_instances(db: Database) -> None:
    db.write(bridges.insert(shop(), its_instances(shop())))
    assert bridges.get(db, "shop") == shop()
    assert [b.id for b in bridges.every(db)] == ["shop"]
    assert instances.get(db, "waha", "shop") is not None
    assert instances.get(db, "chatwoot", "shop") is not None


def test_its_secrets_are_masked_on_read(db: Database) -> None:
    shown = shop().to_json()
    assert shown["gateway"]["api_key"] == "****3456"
    assert shown["chatwoot"]["api_token"] == "****3456"
    assert "waha-api-key" not in repr(shop()) and "chatwoot-token" not in repr(shop())


def test_an_existing_instance_stores_nothing_of_the_bridge(db: Database) -> None:
    db.write(instances.insert(its_instances(shop())[1]))  # chatwoot/shop made by hand
    with pytest.raises(AlreadyExists):
        db.write(bridges.insert(shop(), its_instances(shop())))
    assert bridges.get(db, "shop") is None
    assert instances.get(db, "waha", "shop") is None


def test_a_second_bridge_of_the_same_id_is_refused(db: Database) -> None:
    db.write(bridges.insert(shop(), its_instances(shop())))
    with pytest.raises(AlreadyExists):
        db.write(bridges.insert(shop(), []))


def test_delete_takes_the_bridge_and_its_instances(db: Database) -> None:
    db.write(bridges.insert(shop(), its_instances(shop())))
    db.write(instances.delete("waha", "shop"))  # one removed by hand before
    assert db.write(bridges.delete("shop")) == shop()
    assert bridges.get(db, "shop") is None
    assert instances.get(db, "chatwoot", "shop") is None
    with pytest.raises(NotFound):
        db.write(bridges.delete("shop"))
