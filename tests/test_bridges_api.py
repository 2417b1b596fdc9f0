"""The bridges' admin API: ``POST|GET /admin/bridges``, ``GET|DELETE /admin/bridges/{id}``.

A bridge is made with its two instances in one transaction, answers its secrets and URLs once,
masks them on every read, and goes with both instances. Events of its instances are not
delivered here (the ``bridge`` handler is not part of this surface); what is tested is what the
surface stores and answers, and that the URLs it hands out work.
"""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from conftest import ADMIN_TOKEN, T0, Reply, scalar
from doubles.chatwoot import FakeChatwoot
from live import add_instance, running_box
from signers import SIGNERS, sign_chatwoot
from starlette.testclient import TestClient

from ingress_box.config import Settings
from ingress_box.store import instances as store_instances
from ingress_box.store import mappings as store_mappings
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

Headers = dict[str, str]
API_KEY = "waha-api-key-0123456789"
API_TOKEN = "chatwoot-api-token-0123456789"
BRIDGE: dict[str, Any] = {
    "id": "shop",
    "gateway": {
        "kind": "waha",
        "url": "http://waha:3000",
        "api_key": API_KEY,
        "session": "default",
    },
    "chatwoot": {
        "url": "http://chatwoot:3000",
        "account_id": 1,
        "inbox_id": 7,
        "api_token": API_TOKEN,
    },
}


def create(client: TestClient, headers: Headers, body: Any = None) -> Reply:
    return client.post("/admin/bridges", json=BRIDGE if body is None else body, headers=headers)


def changed(path: str, value: Any) -> dict[str, Any]:
    """BRIDGE with the field at ``path`` (``gateway.url``) set to ``value`` (``...`` drops it)."""
    body = copy.deepcopy(BRIDGE)
    *parents, name = path.split(".")
    node = body
    for parent in parents:
        node = node[parent]
    if value is ...:
        del node[name]
    else:
        node[name] = value
    return body


def instance_keys(box: Box) -> list[tuple[str, str]]:
    rows = box.db.read("SELECT plugin_id, instance_id FROM instances ORDER BY plugin_id")
    return [(r[0], r[1]) for r in rows]


# -- create -----------------------------------------------------------------------------------


def test_create_answers_the_secrets_and_urls_once_with_the_rest_masked(
    client: TestClient, admin_headers: Headers
) -> None:
    """201: generated secrets in full, the URLs (Chatwoot's carrying its secret), the setup
    text; the API key and the token masked."""
    reply = create(client, admin_headers)
    assert reply.status_code == 201, reply.text
    made = reply.json()
    gateway_secret, chatwoot_secret = made["gateway"]["secret"], made["chatwoot"]["secret"]
    assert len(gateway_secret) >= 32 and len(chatwoot_secret) >= 32
    assert gateway_secret != chatwoot_secret
    assert made["gateway"]["api_key"] == "****" + API_KEY[-4:]
    assert made["chatwoot"]["api_token"] == "****" + API_TOKEN[-4:]
    assert API_KEY not in reply.text and API_TOKEN not in reply.text
    assert made["gateway_ingress_url"] == "http://testserver/ingress/waha/shop/events"
    url = urlsplit(made["chatwoot_ingress_url"])
    assert url.path == "/ingress/chatwoot/shop/events"
    assert parse_qs(url.query) == {"secret": [chatwoot_secret]}
    setup = "\n".join(made["setup"])
    assert gateway_secret in setup and made["chatwoot_ingress_url"] in setup
    assert (made["id"], made["gateway"]["kind"], made["chatwoot"]["inbox_id"]) == (
        "shop",
        "waha",
        7,
    )


def test_create_makes_both_instances_delivering_to_the_bridge(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """<kind>/<id> and chatwoot/<id>: handler bridge, the gateway's session, progress lanes,
    no target, the answered secrets; the bridge row holds the API credentials."""
    made = create(client, admin_headers).json()
    assert instance_keys(box) == [("chatwoot", "shop"), ("waha", "shop")]
    for plugin, side in (("waha", "gateway"), ("chatwoot", "chatwoot")):
        inst = store_instances.get(box.db, plugin, "shop")
        assert inst is not None
        assert (inst.handler, inst.session, inst.lane_policy) == ("bridge", "default", "progress")
        assert (inst.target_url, inst.config) == (None, {"bridge": "shop"})
        assert inst.secret == made[side]["secret"]
    row = box.db.read_one("SELECT gateway_api_key, chatwoot_api_token FROM bridges")
    assert row is not None and tuple(row) == (API_KEY, API_TOKEN)


def test_given_secrets_are_kept_and_options_stored(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """Secrets given (Chatwoot's account webhook secret, say) are the instances' secrets."""
    body = changed("gateway.secret", "gateway-given-secret")
    body["chatwoot"]["secret"] = "chatwoot given/secret"
    body["options"] = {"from_me": "outgoing"}
    made = create(client, admin_headers, body).json()
    assert made["gateway"]["secret"] == "gateway-given-secret"
    assert made["chatwoot_ingress_url"].endswith("?secret=chatwoot%20given%2Fsecret")
    assert made["options"] == {"from_me": "outgoing"}
    inst = store_instances.get(box.db, "chatwoot", "shop")
    assert inst is not None and inst.secret == "chatwoot given/secret"


@pytest.mark.parametrize("kind", ["waha", "evolution", "gowa", "openwa"])
def test_each_gateway_kind_gets_its_plugin_instance_and_setup(
    client: TestClient, admin_headers: Headers, box: Box, kind: str
) -> None:
    """The gateway instance is of the kind's plugin; the setup names where its secret goes."""
    made = create(client, admin_headers, changed("gateway.kind", kind)).json()
    assert (kind, "shop") in instance_keys(box)
    assert made["gateway_ingress_url"].endswith(f"/ingress/{kind}/shop/events")
    where = {
        "waha": '"hmac": {"key": "',
        "evolution": '"X-Ingress-Token": "',
        "gowa": "WHATSAPP_WEBHOOK_SECRET=",
        "openwa": '"secret": "',
    }[kind]
    assert where + made["gateway"]["secret"] in "\n".join(made["setup"])


def test_the_urls_handed_out_accept_their_webhooks(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """The gateway URL takes a webhook signed with the gateway secret; the Chatwoot URL takes
    an unsigned one as it is, and a signed one without the secret; all stored."""
    made = create(client, admin_headers).json()
    body = json.dumps({"event": "session.status", "session": "default"}).encode()
    signed = SIGNERS["waha"](made["gateway"]["secret"], body, msg_id="r-1")
    assert client.post(made["gateway_ingress_url"], content=body, headers=signed).status_code == 202
    event = json.dumps({"event": "message_created", "id": 5, "account": {"id": 1}}).encode()
    assert client.post(made["chatwoot_ingress_url"], content=event).status_code == 202
    other = json.dumps({"event": "message_created", "id": 6, "account": {"id": 1}}).encode()
    account = sign_chatwoot(made["chatwoot"]["secret"], other, at=int(T0), msg_id="d-1")
    plain = made["chatwoot_ingress_url"].partition("?")[0]
    assert client.post(plain, content=other, headers=account).status_code == 202
    assert scalar(box.db, "SELECT count(*) FROM deliveries") == 3


# -- conflicts --------------------------------------------------------------------------------


def test_a_second_create_of_the_id_is_409(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """The id is taken: 409 already_exists, the first bridge untouched."""
    first = create(client, admin_headers).json()
    again = create(client, admin_headers, changed("gateway.kind", "gowa"))
    assert (again.status_code, again.json()["error"]["code"]) == (409, "already_exists")
    assert instance_keys(box) == [("chatwoot", "shop"), ("waha", "shop")]
    inst = store_instances.get(box.db, "waha", "shop")
    assert inst is not None and inst.secret == first["gateway"]["secret"]


@pytest.mark.parametrize("taken", [("chatwoot", "shop"), ("waha", "shop")])
def test_an_existing_instance_of_the_id_is_409_and_nothing_is_created(
    client: TestClient, admin_headers: Headers, box: Box, taken: tuple[str, str]
) -> None:
    """A plain instance chatwoot/<id> (or <kind>/<id>) exists: 409, no bridge, no instance."""
    add_instance(box, *taken)
    reply = create(client, admin_headers)
    assert (reply.status_code, reply.json()["error"]["code"]) == (409, "already_exists")
    assert scalar(box.db, "SELECT count(*) FROM bridges") == 0
    assert instance_keys(box) == [taken]


# -- bad input --------------------------------------------------------------------------------

BAD_FIELDS = {
    "id missing": ("id", ...),
    "id pattern": ("id", "shop/1"),
    "id too long": ("id", "s" * 65),
    "id not text": ("id", 7),
    "gateway missing": ("gateway", ...),
    "gateway not object": ("gateway", "waha"),
    "gateway unknown field": ("gateway.extra", 1),
    "kind missing": ("gateway.kind", ...),
    "kind unknown": ("gateway.kind", "twilio"),
    "kind not text": ("gateway.kind", ["waha"]),
    "gateway url missing": ("gateway.url", ...),
    "gateway url scheme": ("gateway.url", "ftp://waha"),
    "gateway url no host": ("gateway.url", "http://"),
    "gateway url spaces": ("gateway.url", "http://wa ha"),
    "gateway url port": ("gateway.url", "http://waha:99999"),
    "api key missing": ("gateway.api_key", ...),
    "api key empty": ("gateway.api_key", ""),
    "session missing": ("gateway.session", ...),
    "session not text": ("gateway.session", 1),
    "gateway secret empty": ("gateway.secret", ""),
    "gateway secret not text": ("gateway.secret", 5),
    "chatwoot missing": ("chatwoot", ...),
    "chatwoot unknown field": ("chatwoot.session", "x"),
    "chatwoot url missing": ("chatwoot.url", ...),
    "chatwoot url bad": ("chatwoot.url", "chatwoot:3000"),
    "account missing": ("chatwoot.account_id", ...),
    "account text": ("chatwoot.account_id", "1"),
    "account zero": ("chatwoot.account_id", 0),
    "account bool": ("chatwoot.account_id", True),
    "account float": ("chatwoot.account_id", 1.5),
    "account huge": ("chatwoot.account_id", 2**63),
    "inbox missing": ("chatwoot.inbox_id", ...),
    "inbox negative": ("chatwoot.inbox_id", -7),
    "token missing": ("chatwoot.api_token", ...),
    "token not text": ("chatwoot.api_token", None),
    "chatwoot secret null": ("chatwoot.secret", None),
    "options not object": ("options", ["a"]),
    "unknown field": ("target_url", "http://x"),
}


@pytest.mark.parametrize(("path", "value"), BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_field_is_400_and_creates_nothing(
    client: TestClient, admin_headers: Headers, box: Box, path: str, value: Any
) -> None:
    """Each missing or wrongly typed field is 400 invalid_input, nothing stored."""
    reply = create(client, admin_headers, changed(path, value))
    assert (reply.status_code, reply.json()["error"]["code"]) == (400, "invalid_input"), reply.text
    assert scalar(box.db, "SELECT count(*) FROM bridges") == 0
    assert instance_keys(box) == []


def test_a_bad_field_is_named_in_the_message(client: TestClient, admin_headers: Headers) -> None:
    """The message says which field, with its side."""
    reply = create(client, admin_headers, changed("chatwoot.inbox_id", ...))
    assert reply.json()["error"]["message"] == "chatwoot.inbox_id is required"


# -- reads ------------------------------------------------------------------------------------


def test_reads_mask_every_secret(client: TestClient, admin_headers: Headers) -> None:
    """GET list and item show neither the webhook secrets nor the API credentials."""
    made = create(client, admin_headers).json()
    listed = client.get("/admin/bridges", headers=admin_headers)
    item = client.get("/admin/bridges/shop", headers=admin_headers)
    for reply in (listed, item):
        assert reply.status_code == 200
        for secret in (made["gateway"]["secret"], made["chatwoot"]["secret"], API_KEY, API_TOKEN):
            assert secret not in reply.text
    assert [b["id"] for b in listed.json()["items"]] == ["shop"]
    assert listed.json()["next_cursor"] is None


def test_an_item_shows_its_instances_urls_and_mapping_count(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """The two instances with their URLs (Chatwoot's without the secret: the signed form) and
    the number of conversation mappings of chatwoot/<id>, in the list too."""
    create(client, admin_headers)
    add_instance(box, "chatwoot", "other")
    for n, instance in ((1, "shop"), (2, "shop"), (3, "other")):
        upsert = store_mappings.Upsert("chatwoot", instance, "default", f"chat-{n}", str(n))
        box.db.write(store_mappings.upsert(upsert, T0))
    item = client.get("/admin/bridges/shop", headers=admin_headers).json()
    assert item["instances"] == [
        {
            "plugin": "waha",
            "instance": "shop",
            "ingress_url": "http://testserver/ingress/waha/shop/events",
        },
        {
            "plugin": "chatwoot",
            "instance": "shop",
            "ingress_url": "http://testserver/ingress/chatwoot/shop/events",
        },
    ]
    assert item["chatwoot_ingress_url"] == "http://testserver/ingress/chatwoot/shop/events"
    assert item["mappings"] == 2
    (listed,) = client.get("/admin/bridges", headers=admin_headers).json()["items"]
    assert listed["mappings"] == 2


def test_an_unknown_bridge_is_404(client: TestClient, admin_headers: Headers) -> None:
    """GET and DELETE of an id with no bridge: 404 not_found."""
    for method in ("GET", "DELETE"):
        reply = client.request(method, "/admin/bridges/nope", headers=admin_headers)
        assert (reply.status_code, reply.json()["error"]["code"]) == (404, "not_found")


def test_bridges_need_the_admin_token(client: TestClient) -> None:
    """No token, no bridge: 401 before the body is looked at."""
    assert client.post("/admin/bridges", json=BRIDGE).status_code == 401
    assert client.get("/admin/bridges").status_code == 401


# -- delete -----------------------------------------------------------------------------------


def test_delete_removes_the_bridge_and_both_instances(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """204; the bridge and both instances are gone, their URLs answer 404, the id is free."""
    made = create(client, admin_headers).json()
    add_instance(box, "generic", "shop")  # another plugin's instance of that id stays
    reply = client.delete("/admin/bridges/shop", headers=admin_headers)
    assert reply.status_code == 204
    assert client.get("/admin/bridges/shop", headers=admin_headers).status_code == 404
    assert instance_keys(box) == [("generic", "shop")]
    assert client.post(made["chatwoot_ingress_url"], content=b"{}").status_code == 404
    assert create(client, admin_headers).status_code == 201


def test_a_running_box_takes_chatwoot_webhooks_at_the_bridge_urls(settings: Settings) -> None:
    """A bridge made through the admin API of a running box; FakeChatwoot given its URLs (the
    inbox's webhook_url with the secret, an account webhook whose secret the bridge was made
    with) posts an agent's message to both: both acked, one delivery of chatwoot/shop."""
    with (
        running_box(settings, run_worker=False) as live,
        FakeChatwoot() as cw,
        httpx.Client(base_url=live.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as http,
    ):
        # As the README says to: the account webhook first (its URL is the bridge id's), then
        # the bridge with that webhook's secret, whose URL the inbox gets.
        account = cw.add_account()
        plain = f"{live.url}/ingress/chatwoot/shop/events"
        hook = cw.add_webhook(account, plain)
        inbox_url = f"{plain}?secret={quote(hook.secret, safe='')}"
        inbox = cw.add_inbox(account, webhook_url=inbox_url)
        body = changed("chatwoot.secret", hook.secret)
        body["chatwoot"] |= {"url": cw.url, "account_id": account, "inbox_id": inbox}
        made = http.post("/admin/bridges", json=body).json()
        assert made["chatwoot_ingress_url"] == inbox_url
        api, auth = f"{cw.url}/api/v1/accounts/{account}", {"api_access_token": cw.token}
        new = {"inbox_id": inbox, "name": "Ann", "identifier": "628111@c.us"}
        contact = http.post(f"{api}/contacts", json=new, headers=auth).json()["payload"]["contact"]
        conversation = http.post(
            f"{api}/conversations",
            json={
                "source_id": contact["contact_inboxes"][0]["source_id"],
                "inbox_id": inbox,
                "contact_id": contact["id"],
            },
            headers=auth,
        ).json()["id"]
        message = cw.agent_reply(account, conversation, "hello")
        assert cw.wait_emitted()
        created = [a for a in cw.deliveries() if a.json["event"] == "message_created"]
        assert sorted(a.url for a in created) == [plain, inbox_url]
        assert {a.status for a in cw.deliveries()} == {202}
        rows = live.box.db.read(
            "SELECT provider_delivery_id FROM deliveries WHERE plugin_id = 'chatwoot'"
            " AND instance_id = 'shop'"
        )
    assert [r[0] for r in rows].count(f"{account}:{message['id']}") == 1


def test_a_bridged_chatwoot_instance_learns_no_mapping_from_its_events(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """The bridge keeps its own mappings: a bridged inbox's contact source id is a UUID, not a
    chat, so an event of chatwoot/<id> binds nothing."""
    secret = create(client, admin_headers).json()["chatwoot"]["secret"]
    event = {
        "event": "message_created",
        "id": 77,
        "account": {"id": 1},
        "conversation": {"id": 55, "contact_inbox": {"source_id": "0f4c-uuid"}},
    }
    url = "/ingress/chatwoot/shop/events?secret=" + secret
    assert client.post(url, json=event).status_code == 202
    assert scalar(box.db, "SELECT count(*) FROM deliveries WHERE plugin_id = 'chatwoot'") == 1
    assert scalar(box.db, "SELECT count(*) FROM conversation_mappings") == 0
