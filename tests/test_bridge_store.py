"""The bridge tables: bridges with their two instances, message links, chat aliases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingress_box.config import DatabaseUrl
from ingress_box.errors import AlreadyExists, NotFound
from ingress_box.store import Database, bridge_links, bridges, instances, open_database
from ingress_box.store.instances import Instance

pytestmark = pytest.mark.both_stores

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
def db(store: Path | DatabaseUrl) -> Iterator[Database]:
    opened = open_database(store).open()
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


def test_an_inbound_link_is_found_by_either_id_and_filled_in_later(db: Database) -> None:
    db.write(bridge_links.posted("shop", "1555@c.us", "KEY1", 0, 55, None, NOW))
    db.write(bridge_links.posted("shop", "1555@c.us", "KEY1", 0, 55, 901, NOW + 1))
    (link,) = bridge_links.of_wa(db, "shop", "KEY1")
    assert (link.direction, link.cw_message_id, link.cw_conversation_id) == ("inbound", 901, 55)
    assert bridge_links.of_chatwoot(db, "shop", 901) == [link]
    assert bridge_links.of_wa(db, "other", "KEY1") == []


def test_an_outbound_part_is_in_flight_until_its_whatsapp_id_is_recorded(db: Database) -> None:
    first = db.write(bridge_links.sending("shop", "1555@c.us", 902, 0, 55, NOW))
    assert first.in_flight and first.wa_id is None
    assert bridge_links.in_flight(db, "shop", "1555@c.us", since=NOW - 30)
    assert not bridge_links.in_flight(db, "shop", "1555@c.us", since=NOW + 1)
    db.write(bridge_links.sent("shop", 902, 0, "WA-OUT-1", NOW + 1))
    again = db.write(bridge_links.sending("shop", "1555@c.us", 902, 0, 55, NOW + 2))
    assert again.wa_id == "WA-OUT-1" and not again.in_flight  # a retry skips this part
    assert not bridge_links.in_flight(db, "shop", "1555@c.us", since=NOW - 30)
    assert [x.cw_message_id for x in bridge_links.of_wa(db, "shop", "WA-OUT-1")] == [902]


def test_an_alias_resolves_to_its_chat_and_follows_a_later_change(db: Database) -> None:
    assert bridge_links.canonical(db, "shop", "999@lid") == "999@lid"
    db.write(bridge_links.alias("shop", "999@lid", "1555@c.us", NOW))
    db.write(bridge_links.alias("shop", "1555@c.us", "1555@c.us", NOW))  # itself: nothing
    assert bridge_links.canonical(db, "shop", "999@lid") == "1555@c.us"
    assert bridge_links.canonical(db, "shop", "1555@c.us") == "1555@c.us"
    db.write(bridge_links.alias("shop", "999@lid", "1666@c.us", NOW + 1))
    assert bridge_links.canonical(db, "shop", "999@lid") == "1666@c.us"


def test_posting_claims_a_message_once_and_tells_a_later_claim_so(db: Database) -> None:
    first, new = db.write(bridge_links.posting("shop", "1555@c.us", "KEY2", 0, 55, NOW))
    again, new_again = db.write(bridge_links.posting("shop", "1555@c.us", "KEY2", 0, 56, NOW + 1))
    assert (new, new_again) == (True, False)
    assert again == first and again.cw_message_id is None  # in doubt until posted() fills it
    db.write(bridge_links.posted("shop", "1555@c.us", "KEY2", 0, 55, 903, NOW + 2))
    done, _ = db.write(bridge_links.posting("shop", "1555@c.us", "KEY2", 0, 55, NOW + 3))
    assert done.cw_message_id == 903


def test_an_unsent_part_is_forgotten_but_a_sent_one_is_kept(db: Database) -> None:
    db.write(bridge_links.sending("shop", "1555@c.us", 904, 0, 55, NOW))
    db.write(bridge_links.sending("shop", "1555@c.us", 904, 1, 55, NOW))
    db.write(bridge_links.sent("shop", 904, 1, "WA-OUT-2", NOW))
    db.write(bridge_links.unsent("shop", 904, 0))
    db.write(bridge_links.unsent("shop", 904, 1))
    assert [(x.part, x.wa_id) for x in bridge_links.of_chatwoot(db, "shop", 904)] == [
        (1, "WA-OUT-2")
    ]


def test_an_echo_claims_an_unconfirmed_or_settled_part_but_not_one_still_sending(
    db: Database,
) -> None:
    db.write(bridge_links.sending("shop", "1555@c.us", 905, 0, 55, NOW))  # its attempt is over
    db.write(bridge_links.sending("shop", "1555@c.us", 906, 0, 55, NOW + 20))  # still sending
    db.write(bridge_links.sending("shop", "1555@c.us", 907, 0, 55, NOW + 20))
    db.write(bridge_links.sent("shop", 907, 0, bridge_links.UNCONFIRMED + "907:0", NOW + 21))

    def claim(wa_id: str) -> bool:
        result: bool = db.write(
            bridge_links.claim_echo("shop", "1555@c.us", wa_id, NOW - 30, NOW + 10, NOW + 22)
        )
        return result

    assert claim("WA-ECHO-1") and claim("WA-ECHO-2") and not claim("WA-ECHO-3")
    assert bridge_links.of_wa(db, "shop", "WA-ECHO-1")[0].cw_message_id == 905
    assert bridge_links.of_wa(db, "shop", "WA-ECHO-2")[0].cw_message_id == 907
    assert bridge_links.of_chatwoot(db, "shop", 906)[0].in_flight


def test_a_claim_whose_attempt_is_over_is_taken_over_by_one_attempt_only(db: Database) -> None:
    claim, _ = db.write(bridge_links.posting("shop", "1555@c.us", "KEY3", 0, None, NOW))
    first = db.write(bridge_links.take_over("shop", "KEY3", 0, claim.created_at, NOW + 5))
    second = db.write(bridge_links.take_over("shop", "KEY3", 0, claim.created_at, NOW + 5))
    assert (first, second) == (True, False)
    renewed, new = db.write(bridge_links.posting("shop", "1555@c.us", "KEY3", 0, None, NOW + 6))
    assert (renewed.created_at, new) == (NOW + 5, False)


def test_an_unclaimed_message_is_claimed_afresh_but_a_posted_one_stays(db: Database) -> None:
    db.write(bridge_links.posting("shop", "1555@c.us", "KEY4", 0, None, NOW))
    db.write(bridge_links.unclaim("shop", "KEY4", 0, NOW))
    _, new = db.write(bridge_links.posting("shop", "1555@c.us", "KEY4", 0, None, NOW + 1))
    assert new
    db.write(bridge_links.posted("shop", "1555@c.us", "KEY4", 0, 55, 906, NOW + 2))
    db.write(bridge_links.unclaim("shop", "KEY4", 0, NOW + 1))
    assert [x.cw_message_id for x in bridge_links.of_wa(db, "shop", "KEY4")] == [906]
