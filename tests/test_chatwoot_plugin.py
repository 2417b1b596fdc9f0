"""The chatwoot plugin's two doors and its dedup: a signed account webhook, or an API inbox's
``webhook_url`` carrying the instance secret as ``?secret=`` (Chatwoot signs no inbox webhook
before 4.13); one message posted to both is one delivery.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import T0, Clock, Reply, scalar
from doubles.chatwoot import FakeChatwoot
from live import SECRET, add_instance, running_box
from signers import sign_chatwoot
from starlette.testclient import TestClient
from waiting import eventually

from ingress_box.config import Settings
from ingress_box.errors import ManifestError
from ingress_box.plugins import parse_manifest
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

URL = "/ingress/chatwoot/main/events"
EVENT = {
    "event": "message_created",
    "id": 41,
    "account": {"id": 3},
    "message_type": "outgoing",
    "conversation": {"id": 7},
}


def body_of(**changes: Any) -> bytes:
    return json.dumps({**EVENT, **changes}).encode()


def post(client: TestClient, body: bytes, query: str = "", **headers: str) -> Reply:
    return client.post(
        URL + query, content=body, headers={"content-type": "application/json", **headers}
    )


def stored_rows(box: Box) -> list[dict[str, Any]]:
    return [dict(r) for r in box.db.read("SELECT * FROM deliveries")]


# -- the URL's secret -------------------------------------------------------------------------


def test_the_url_secret_is_accepted_without_a_signature(client: TestClient, box: Box) -> None:
    """An unsigned API-inbox webhook whose URL carries the instance secret is accepted."""
    add_instance(box, "chatwoot")
    reply = post(client, body_of(), f"?secret={quote(SECRET)}")
    assert reply.status_code == 202, reply.text
    assert [r["provider_delivery_id"] for r in stored_rows(box)] == ["3:41"]


def test_a_wrong_url_secret_is_401_as_a_bad_signature(client: TestClient, box: Box) -> None:
    """Another secret in the URL is refused like a wrong signature; nothing is stored."""
    add_instance(box, "chatwoot")
    for query in ("?secret=not-the-secret", "?secret=", f"?secret={SECRET}x"):
        reply = post(client, body_of(), query)
        assert (reply.status_code, reply.json()["error"]["code"]) == (401, "bad_signature")
    assert stored_rows(box) == []


def test_without_a_signature_or_a_url_secret_it_is_refused(client: TestClient, box: Box) -> None:
    """Neither door: 401, nothing stored (another query parameter is no secret)."""
    add_instance(box, "chatwoot")
    assert post(client, body_of()).status_code == 401
    assert post(client, body_of(), f"?token={SECRET}").status_code == 401
    assert stored_rows(box) == []


def test_the_signed_form_is_accepted_without_a_url_secret(client: TestClient, box: Box) -> None:
    """An account webhook signed with the secret passes as before."""
    add_instance(box, "chatwoot")
    body = body_of()
    reply = post(client, body, **sign_chatwoot(SECRET, body, at=int(T0), msg_id="d-1"))
    assert reply.status_code == 202, reply.text


def test_a_url_secret_lets_in_a_webhook_signed_with_another_key(
    client: TestClient, box: Box
) -> None:
    """Chatwoot 4.13 signs an inbox webhook with the inbox's own key, not the instance's:
    the URL's secret still admits it (a forger could drop the signature anyway)."""
    add_instance(box, "chatwoot")
    body = body_of()
    signed = sign_chatwoot("the-inbox-own-key", body, at=int(T0), msg_id="d-1")
    assert post(client, body, **signed).status_code == 401
    assert post(client, body, f"?secret={SECRET}", **signed).status_code == 202


def test_the_previous_url_secret_works_within_the_rotation_grace(
    client: TestClient, box: Box, clock: Clock, admin_headers: dict[str, str]
) -> None:
    """After rotate-secret the old URL keeps working for the grace window, then stops."""
    add_instance(box, "chatwoot")
    rotated = client.post(
        "/admin/instances/chatwoot/main/rotate-secret",
        json={"grace_seconds": 60},
        headers=admin_headers,
    )
    new = rotated.json()["secret"]
    assert post(client, body_of(id=1), f"?secret={SECRET}").status_code == 202
    assert post(client, body_of(id=2), f"?secret={quote(new)}").status_code == 202
    clock.advance(61)
    assert post(client, body_of(id=3), f"?secret={SECRET}").status_code == 401


def test_the_url_secret_is_never_stored(
    client: TestClient, box: Box, admin_headers: dict[str, str]
) -> None:
    """The stored subpath has the secret redacted: not in the row, nor in the admin's answer."""
    add_instance(box, "chatwoot")
    reply = post(client, body_of(), f"?x=1&secret={quote(SECRET)}")
    assert reply.status_code == 202
    (row,) = stored_rows(box)
    assert row["subpath"] == "?x=1&secret=[redacted]"
    assert SECRET not in repr(row)
    shown = client.get(f"/admin/deliveries/{reply.json()['id']}", headers=admin_headers)
    assert shown.status_code == 200
    assert SECRET not in shown.text


# -- dedup ------------------------------------------------------------------------------------


def test_message_created_is_one_delivery_per_account_and_message(
    client: TestClient, box: Box
) -> None:
    """The same message under two delivery ids is one delivery; another account's message of
    that id is another."""
    add_instance(box, "chatwoot")
    body = body_of()
    for delivery in ("d-1", "d-2"):
        reply = post(client, body, **sign_chatwoot(SECRET, body, at=int(T0), msg_id=delivery))
        assert reply.status_code == 202
    other = body_of(account={"id": 4})
    post(client, other, **sign_chatwoot(SECRET, other, at=int(T0), msg_id="d-3"))
    assert [r["provider_delivery_id"] for r in stored_rows(box)] == ["3:41", "4:41"]


def test_other_events_dedup_on_the_delivery_header_else_the_body(
    client: TestClient, box: Box
) -> None:
    """A conversation event is its X-Chatwoot-Delivery; an unsigned one without it (an older
    Chatwoot's inbox webhook) is its body hash, so a resend of the same bytes is one."""
    add_instance(box, "chatwoot")
    event = body_of(event="conversation_updated")
    post(client, event, **sign_chatwoot(SECRET, event, at=int(T0), msg_id="d-1"))
    post(client, event, f"?secret={SECRET}")
    post(client, event, f"?secret={SECRET}")
    ids = [r["provider_delivery_id"] for r in stored_rows(box)]
    assert ids[0] == "d-1" and len(ids) == 2 and len(ids[1]) == 64


def test_a_message_posted_to_the_inbox_and_an_account_webhook_is_one_delivery(
    settings: Settings,
) -> None:
    """FakeChatwoot fans an agent's message out to the API inbox's webhook_url (unsigned, the
    URL's secret) and to an account webhook (signed), each with its own delivery id: both are
    acked, and the box holds one delivery of it."""
    with (
        running_box(settings, run_worker=False) as live,
        FakeChatwoot() as cw,
        httpx.Client() as http,
    ):
        add_instance(live.box, "chatwoot")
        url = f"{live.url}{URL}"
        account = cw.add_account()
        inbox = cw.add_inbox(account, webhook_url=f"{url}?secret={quote(SECRET)}")
        cw.add_webhook(account, url, ["message_created"], secret=SECRET)
        api, auth = f"{cw.url}/api/v1/accounts/{account}", {"api_access_token": cw.token}
        new = {"inbox_id": inbox, "name": "Ann", "identifier": "a"}
        contact = http.post(f"{api}/contacts", json=new, headers=auth).json()["payload"]["contact"]
        source_id = contact["contact_inboxes"][0]["source_id"]
        conversation = http.post(
            f"{api}/conversations",
            json={"source_id": source_id, "inbox_id": inbox, "contact_id": contact["id"]},
            headers=auth,
        ).json()["id"]
        message = cw.agent_reply(account, conversation, "hello from the UI")
        assert cw.wait_emitted()
        created = [a for a in cw.deliveries() if a.json["event"] == "message_created"]
        assert len(created) == 2 and {a.status for a in created} == {202}
        assert len({a.headers["X-Chatwoot-Delivery"] for a in created}) == 2
        eventually(lambda: scalar(live.box.db, "SELECT count(*) FROM deliveries") >= 2, 10, "rows")
        rows = live.box.db.read("SELECT provider_delivery_id FROM deliveries")
    assert [r[0] for r in rows].count(f"{account}:{message['id']}") == 1


# -- the manifest key -------------------------------------------------------------------------


def test_a_route_without_url_secret_param_ignores_a_secret_in_its_url(
    client: TestClient, box: Box
) -> None:
    """Only a route that names the parameter takes the URL's secret (generic does not)."""
    add_instance(box, "generic")
    reply = client.post(f"/ingress/generic/main/events?secret={SECRET}", content=b"{}")
    assert reply.status_code == 401


@pytest.mark.parametrize(
    "verify",
    [
        {"scheme": "hmac", "header": "X-Sig", "url_secret_param": "bad name"},
        {"scheme": "hmac", "header": "X-Sig", "url_secret_param": 1},
        {
            "scheme": "hmac",
            "header": "X-Sig",
            "prefix": "a=",
            "variant": {"prefix": "b=", "algorithm": "sha512", "url_secret_param": "s"},
        },
    ],
)
def test_a_bad_url_secret_param_fails_naming_the_field(verify: dict[str, Any]) -> None:
    """A parameter name of plain characters, on the main form only."""
    manifest = {"id": "acme", "name": "Acme", "routes": {"hooks": {"verify": verify}}}
    with pytest.raises(ManifestError) as info:
        parse_manifest(manifest, "acme.json")
    assert info.value.field.startswith("routes.hooks.verify.")
