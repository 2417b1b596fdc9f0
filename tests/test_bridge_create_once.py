"""Create-once as a property: whatever the interleaving of new contacts' first messages, their
reports under both chat ids, Chatwoot's refusals and failures after writing, and its duplicated
or reordered webhooks, every chat gets one contact and one conversation and each message lands
once, in the order the box took it.

One box runs for the whole test; each example gets a fresh bridge, gateway double and Chatwoot
account, so examples cannot see each other's contacts.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from bridging import CHATWOOT_SECRET, bridge_settings, gateway_double, join
from doubles.base import Delivery
from doubles.chatwoot import FakeChatwoot
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from live import running_box
from waiting import eventually

from ingress_box.config import Settings
from ingress_box.store import Database

pytestmark = pytest.mark.both_stores

KINDS = ("waha", "openwa")  # the gateways that report one message as @c.us and as @lid
CONTACTS = ("628111", "628222", "628333")
LIDS = {"628111": "1555", "628222": "1666", "628333": "1777"}

A = "/api/v1/accounts/{account}"
# (method, path under the account, status, after the write): what Chatwoot may do to a call.
FAULTS = {
    "contact refused": ("POST", "/contacts", 422, False),
    "contact taken meanwhile": ("POST", "/contacts", 422, True),
    "contact written, then 500": ("POST", "/contacts", 500, True),
    "conversation or message written, then 502": ("POST", "/conversations", 502, True),
    "search down": ("GET", "/contacts/search", 503, False),
}

message = st.tuples(
    st.sampled_from(CONTACTS),
    st.sampled_from(["phone", "both ids", "both ids, @lid first"]),
    st.integers(min_value=1, max_value=2),  # copies of each report (a gateway's redelivery)
)
scenario = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(KINDS),
        "messages": st.lists(message, min_size=1, max_size=8),
        "faults": st.lists(
            st.tuples(st.sampled_from(sorted(FAULTS)), st.integers(1, 2)), max_size=3
        ),
        "duplicate_emission": st.booleans(),
        "reverse_emission": st.booleans(),
    }
)


def send(kind: str, gateway: Any, contact: str, how: str, copies: int, text: str) -> list[Any]:
    """One message of ``contact``, reported as ``how`` says: ``[key id, the deliveries in the
    phone chat's lane, those in the @lid chat's lane]``. WAHA's @lid reports are the same
    delivery at the box (one key id), so all of them count as the phone chat's."""
    lid = LIDS[contact]
    if kind == "waha":  # WAHA: one key id, again with the @lid chat (one delivery at the box)
        first = gateway.inbound(contact, text, lid=lid, duplicate_as_lid=how != "phone")
        again = [
            gateway.inbound(contact, text, lid=lid, key_id=first.key_id) for _ in range(copies - 1)
        ]
        return [first.key_id, [d for r in [first, *again] for d in r.deliveries], []]
    key_id = None
    phone: list[Delivery] = []
    lids: list[Delivery] = []
    order = ["lid", "phone"] if how == "both ids, @lid first" else ["phone", "lid"]
    for which in order if how != "phone" else ["phone"]:
        if which == "phone":
            sent = gateway.inbound(contact, text, key_id=key_id, duplicates=copies)
            phone += sent.deliveries
        else:
            sent = gateway.inbound(
                f"{lid}@lid", text, key_id=key_id, phone=contact, duplicates=copies
            )
            lids += sent.deliveries
        key_id = sent.key_id
    return [key_id, phone, lids]


def taken_order(gateway: Any, deliveries: dict[bytes, str]) -> list[str]:
    """The key ids in the order the box acked their first report (the double posts one at a
    time, so that is the order the box took them in)."""
    order: list[str] = []
    for attempt in gateway.emitter.attempts:
        key = deliveries.get(attempt.body)
        ok = attempt.status is not None and 200 <= attempt.status < 300
        if ok and key is not None and key not in order:
            order.append(key)
    return order


def undone(db: Database, bridge_id: str) -> int:
    row = db.read_one(
        "SELECT count(*) FROM deliveries WHERE instance_id = ? AND state != 'delivered'",
        (bridge_id,),
    )
    return int(row[0]) if row is not None else -1


def test_every_chat_gets_one_contact_one_conversation_and_each_message_once(
    settings: Settings,
) -> None:
    """The create-once invariant over random interleavings of messages, reports and faults."""
    numbers = itertools.count(1)
    with (
        running_box(bridge_settings(settings, delivery_timeout_seconds=1, lease_seconds=2)) as live,
        FakeChatwoot() as chatwoot,
    ):
        db = live.box.db

        @examples(max_examples=25, deadline=None)
        @given(scenario)
        def example(case: dict[str, Any]) -> None:
            kind, bridge_id = case["kind"], f"p{next(numbers)}"
            gateway, api_key, session = gateway_double(
                kind, f"{live.url}/ingress/{kind}/{bridge_id}/events"
            )
            with gateway:
                account = chatwoot.add_account()
                inbox = chatwoot.add_inbox(account)
                webhook = f"{live.url}/ingress/chatwoot/{bridge_id}/events"
                chatwoot.add_webhook(account, webhook, secret=CHATWOOT_SECRET)
                join(db, bridge_id, kind, gateway.url, session, api_key, chatwoot, account, inbox)
                for name, count in case["faults"]:
                    method, path, status, after = FAULTS[name]
                    prefix = A.format(account=account) + path
                    chatwoot.fail_next(method, prefix, count, status, after=after)
                chatwoot.duplicate_emission = case["duplicate_emission"]
                if case["reverse_emission"]:
                    chatwoot.hold_emissions()
                keys: dict[str, list[str]] = {}
                firsts: dict[bytes, str] = {}
                for n, (contact, how, copies) in enumerate(case["messages"]):
                    key, phone, _ = send(kind, gateway, contact, how, copies, f"m{n}")
                    keys.setdefault(contact, []).append(key)
                    firsts |= {d.body: key for d in phone}
                eventually(lambda: gateway.wait_idle(0.01), 30, "the gateway's webhooks")
                if case["reverse_emission"]:
                    chatwoot.release(reverse=True)
                eventually(
                    lambda: chatwoot.wait_emitted(0.01) and undone(db, bridge_id) == 0,
                    60,
                    f"every delivery of bridge {bridge_id} delivered",
                )
                order = taken_order(gateway, firsts)
            contacts = chatwoot.contacts(account)
            phones = {c: f"{c}@c.us" for c in keys}
            assert sorted(c["identifier"] for c in contacts) == sorted(phones.values())
            conversations = chatwoot.conversations(account)
            assert len(conversations) == len(keys)
            for conversation in conversations:
                chat = conversation["meta"]["sender"]["identifier"]
                (contact,) = [c for c in keys if phones[c] == chat]
                posted = [
                    str(m["source_id"]).removeprefix("WAID:")
                    for m in chatwoot.messages(account, conversation["id"])
                    if str(m["source_id"]).startswith("WAID:")
                ]
                assert posted == [k for k in order if k in keys[contact]], case

        example()
