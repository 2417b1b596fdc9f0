"""A bridge, end to end: the real box (uvicorn, its worker) between a gateway double and
FakeChatwoot, the bridge and its two instances written through the store.

    with bridged(settings, "waha") as b:
        b.gateway.inbound(b.contact, "hi")
        (conversation,) = b.wait_conversations(1)
        b.chatwoot.agent_reply(b.account, conversation["id"], "hello")
        b.wait_sent(1)

The gateway double posts to ``/ingress/<kind>/shop/events``, signed as that gateway signs;
FakeChatwoot posts signed account webhooks to ``/ingress/chatwoot/shop/events``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from conftest import ADMIN_TOKEN
from doubles.chatwoot import FakeChatwoot
from doubles.evolution import FakeEvolution
from doubles.gateway import GatewayDouble
from doubles.gowa import FakeGOWA
from doubles.openwa import FakeOpenWA
from doubles.waha import FakeWAHA, WahaRetries
from live import LiveBox, running_box
from waiting import eventually

from ingress_box.config import Settings, load_settings
from ingress_box.signing import generate_outbound_secret
from ingress_box.store import Database, bridges
from ingress_box.store.instances import Instance
from ingress_box.store.mappings import ConversationMapping, Filter, list_page

BRIDGE = "shop"
GATEWAY_SECRET = "gateway-webhook-secret"
CHATWOOT_SECRET = "chatwoot-webhook-secret"
KINDS = ("waha", "evolution", "gowa", "openwa")
FAST = 0.01  # the gateway doubles' retry delays, scaled down
PHONE_SERVER = {
    "waha": "c.us",
    "openwa": "c.us",
    "evolution": "s.whatsapp.net",
    "gowa": "s.whatsapp.net",
}


def bridge_settings(settings: Settings, **overrides: Any) -> Settings:
    """The test's settings with retries a test can wait for (milliseconds, not minutes)."""
    values = {
        "db_path": settings.db_path,
        "admin_token": ADMIN_TOKEN,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 5,
        "delivery_timeout_seconds": 3,
        "lease_seconds": 10,
        **overrides,
    }
    return load_settings({}, **values)


def gateway_double(kind: str, url: str) -> tuple[GatewayDouble, str, str]:
    """The double of ``kind`` posting to ``url``; its API key and the bridge's session."""
    if kind == "waha":
        retries = WahaRetries(attempts=3)
        waha = FakeWAHA(url, hmac_key=GATEWAY_SECRET, retries=retries, time_scale=FAST)
        return waha, waha.api_key, waha.session
    if kind == "evolution":
        headers = {"X-Ingress-Token": GATEWAY_SECRET}
        evolution = FakeEvolution(url, webhook_headers=headers, time_scale=FAST)
        return evolution, evolution.api_key, evolution.instance
    if kind == "gowa":
        gowa = FakeGOWA(url, secret=GATEWAY_SECRET, time_scale=FAST)
        assert gowa.basic_auth is not None
        return gowa, ":".join(gowa.basic_auth), gowa.device_id
    openwa = FakeOpenWA(url, secret=GATEWAY_SECRET, time_scale=FAST)
    return openwa, openwa.api_key, openwa.session


@dataclass
class Bridged:
    live: LiveBox
    kind: str
    gateway: Any  # the kind's double (their inbound() options differ)
    chatwoot: FakeChatwoot
    account: int
    inbox: int
    session: str

    contact = "628111"  # the digits of the contact a test talks to

    def jid(self, digits: str | None = None) -> str:
        return f"{digits or self.contact}@{PHONE_SERVER[self.kind]}"

    def conversations(self) -> list[dict[str, Any]]:
        return self.chatwoot.conversations(self.account)

    def messages(self, conversation_id: int, *, source: str | None = None) -> list[dict[str, Any]]:
        """The conversation's messages, or only those whose source_id starts with ``source``."""
        found = self.chatwoot.messages(self.account, conversation_id)
        return [m for m in found if source is None or str(m["source_id"]).startswith(source)]

    def wait_conversations(self, count: int) -> list[dict[str, Any]]:
        eventually(lambda: len(self.conversations()) >= count, 15, f"{count} conversation(s)")
        return self.conversations()

    def wait_messages(self, conversation_id: int, count: int, source: str = "WAID:") -> list[Any]:
        eventually(
            lambda: len(self.messages(conversation_id, source=source)) >= count,
            15,
            f"{count} bridged message(s) in conversation {conversation_id}",
        )
        return self.messages(conversation_id, source=source)

    def wait_sent(self, count: int) -> list[Any]:
        eventually(lambda: len(self.gateway.sent) >= count, 15, f"{count} send(s)")
        sent: list[Any] = self.gateway.sent
        return sent

    def settled(self) -> bool:
        """Every delivery of the box done (delivered or dead), and no webhook in flight."""
        row = self.live.box.db.read_one(
            "SELECT count(*) FROM deliveries WHERE state NOT IN ('delivered', 'dead')"
        )
        return row is not None and row[0] == 0 and self.idle()

    def idle(self) -> bool:
        return bool(self.gateway.wait_idle(0.01) and self.chatwoot.wait_emitted(0.01))

    def wait_settled(self) -> None:
        eventually(self.settled, 20, "every delivery to be done")

    def states(self, plugin: str) -> list[str]:
        rows = self.live.box.db.read(
            "SELECT state FROM deliveries WHERE plugin_id = ? ORDER BY seq", (plugin,)
        )
        return [r["state"] for r in rows]

    def notes(self, plugin: str) -> list[str]:
        """The error text of every attempt of the plugin's deliveries (a skip's reason)."""
        rows = self.live.box.db.read(
            "SELECT a.error FROM attempts a JOIN deliveries d ON d.seq = a.delivery_seq "
            "WHERE d.plugin_id = ? ORDER BY a.id",
            (plugin,),
        )
        return [r["error"] or "" for r in rows]

    def mappings(self) -> list[ConversationMapping]:
        page = list_page(self.live.box.db, Filter(plugin_id="chatwoot", instance_id=BRIDGE))
        return list(page.items)

    def make_contact(self, name: str, phone: str) -> int:
        """A contact made in Chatwoot by hand (no identifier); its id."""
        response = httpx.post(
            f"{self.chatwoot.url}/api/v1/accounts/{self.account}/contacts",
            json={"name": name, "phone_number": phone},
            headers={"api_access_token": self.chatwoot.token},
        )
        assert response.status_code == 200, response.text
        return int(response.json()["payload"]["contact"]["id"])

    def redrive(self) -> int:
        response = httpx.post(
            f"{self.live.url}/admin/dlq/redrive",
            json={},
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status_code == 200, response.text
        redriven: int = response.json()["redriven"]
        return redriven


def join(
    db: Database,
    bridge_id: str,
    kind: str,
    gateway_url: str,
    session: str,
    api_key: str,
    chatwoot: FakeChatwoot,
    account: int,
    inbox: int,
    options: dict[str, Any] | None = None,
) -> None:
    """Write bridge ``bridge_id`` (the gateway at ``gateway_url``, the Chatwoot ``account`` and
    ``inbox``) and its two instances, with this module's webhook secrets, through the store."""
    now = time.time()
    bridge = bridges.Bridge(
        id=bridge_id,
        gateway=bridges.Gateway(kind, gateway_url, session, api_key),
        chatwoot=bridges.Chatwoot(chatwoot.url, account, inbox, chatwoot.token),
        created_at=now,
        options=options or {},
    )
    secrets = {kind: GATEWAY_SECRET, "chatwoot": CHATWOOT_SECRET}
    instances = [
        Instance(
            plugin,
            bridge_id,
            secrets[plugin],
            generate_outbound_secret(),
            now,
            now,
            handler="bridge",
            session=session,
            config={"bridge": bridge_id},
        )
        for plugin, _ in bridge.instances
    ]
    db.write(bridges.insert(bridge, instances))


@contextlib.contextmanager
def bridged(
    settings: Settings, kind: str, *, options: dict[str, Any] | None = None, **overrides: Any
) -> Iterator[Bridged]:
    """The box, FakeChatwoot and the ``kind`` gateway double, joined by bridge ``shop``."""
    with (
        running_box(bridge_settings(settings, **overrides)) as live,
        FakeChatwoot() as chatwoot,
    ):
        gateway, api_key, session = gateway_double(
            kind, f"{live.url}/ingress/{kind}/{BRIDGE}/events"
        )
        with gateway:
            account = chatwoot.add_account()
            inbox = chatwoot.add_inbox(account)
            chatwoot.add_webhook(
                account, f"{live.url}/ingress/chatwoot/{BRIDGE}/events", secret=CHATWOOT_SECRET
            )
            join(
                live.box.db,
                BRIDGE,
                kind,
                gateway.url,
                session,
                api_key,
                chatwoot,
                account,
                inbox,
                options,
            )
            yield Bridged(live, kind, gateway, chatwoot, account, inbox, session)
