"""The dashboard under /admin/ui, server side: sessions, CSRF, the forms' effects, the pages."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, T0, Clock, MakeDeadLetters, MakeDeliveries, Reply
from signers import sign_generic
from starlette.testclient import TestClient

from ingress_box.app import App
from ingress_box.store import Database, instances, mappings
from ingress_box.store.deliveries import NewDelivery, accept
from ingress_box.web.box import Box
from ingress_box.web.dashboard import COOKIE

pytestmark = pytest.mark.both_stores

UI = "/admin/ui"
HOSTILE = '<script>alert("x")</script>'


def log_in(client: TestClient, token: str = ADMIN_TOKEN, **extra: str) -> Reply:
    return client.post(f"{UI}/login", data={"token": token, **extra}, follow_redirects=False)


def csrf_of(client: TestClient, path: str = f"{UI}/dlq") -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert match is not None, "the page has no CSRF field"
    return match.group(1)


@pytest.fixture
def ui(client: TestClient) -> TestClient:
    """The client, logged in to the dashboard."""
    assert log_in(client).status_code == 303
    return client


def add_delivery(db: Database, n: int, **changes: Any) -> str:
    """Accept one delivery with the given fields (conversation, body, ...) and return its id."""
    fields: dict[str, Any] = {
        "id": f"msg_dash{n:04d}",
        "plugin_id": "generic",
        "instance_id": "main",
        "route": "events",
        "provider_delivery_id": f"evt-{n}",
        "conversation": None,
        "method": "POST",
        "subpath": "",
        "content_type": "application/json",
        "headers": json.dumps({"x-delivery": f"evt-{n}", "x-signature": "[redacted]"}),
        "body": b'{"hello": "world"}',
        "received_at": T0,
    }
    fields.update(changes)
    delivery = NewDelivery(**fields)
    db.write(lambda conn: accept(conn, delivery))
    return delivery.id


def one(db: Database, sql: str, *params: Any) -> sqlite3.Row:
    row = db.read_one(sql, params)
    assert row is not None
    return row


# -- sessions --------------------------------------------------------------------------------


def test_pages_redirect_to_the_login_without_a_session(client: TestClient) -> None:
    """A page asked for without a session redirects to the login, remembering where to go."""
    response = client.get(f"{UI}/deliveries?state=dead", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == (
        f"{UI}/login?next=%2Fadmin%2Fui%2Fdeliveries%3Fstate%3Ddead"
    )


def test_bare_prefix_is_the_dashboard_not_the_admin_api(client: TestClient) -> None:
    """/admin/ui itself leads to the dashboard instead of the admin API's 401."""
    response = client.get(UI, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == f"{UI}/"


def test_overview_api_without_a_session_is_401(client: TestClient) -> None:
    """The live charts' JSON endpoint answers 401 JSON, not a redirect, without a session."""
    response = client.get(f"{UI}/api/overview", follow_redirects=False)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_bearer_token_alone_does_not_open_the_dashboard(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    """The dashboard wants its session; an Authorization header is not a login."""
    response = client.get(f"{UI}/", headers=admin_headers, follow_redirects=False)
    assert response.status_code == 303


def test_wrong_token_is_rejected_without_a_cookie(client: TestClient) -> None:
    """A wrong token re-shows the login with 401 and starts no session."""
    response = log_in(client, "not-the-token")
    assert response.status_code == 401
    assert "not the admin token" in response.text
    assert "set-cookie" not in response.headers
    assert client.get(f"{UI}/", follow_redirects=False).status_code == 303


def test_login_cookie_is_httponly_strict_and_scoped(client: TestClient) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, Path=/admin/ui, and not the token."""
    response = log_in(client)
    assert response.status_code == 303 and response.headers["location"] == f"{UI}/"
    cookie = response.headers["set-cookie"]
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/admin/ui" in flags
    assert "secure" not in flags  # plain http here: a Secure cookie would never come back
    assert ADMIN_TOKEN not in cookie


def test_login_cookie_is_secure_over_https(app: App) -> None:
    """Over https the session cookie is also Secure."""
    with TestClient(app, base_url="https://testserver") as client:
        cookie = log_in(client).headers["set-cookie"]
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_login_redirects_only_within_the_dashboard(client: TestClient) -> None:
    """The login's ``next`` is followed inside /admin/ui and ignored elsewhere."""
    assert log_in(client, next=f"{UI}/dlq?plugin=generic").headers["location"] == (
        f"{UI}/dlq?plugin=generic"
    )
    assert log_in(client, next="https://evil.example/").headers["location"] == f"{UI}/"
    assert log_in(client, next="//evil.example/admin/ui/").headers["location"] == f"{UI}/"


def test_logout_ends_the_session(ui: TestClient) -> None:
    """After logging out, the old session id opens nothing."""
    session_id = ui.cookies.get(COOKIE)
    response = ui.post(f"{UI}/logout", data={"csrf": csrf_of(ui)}, follow_redirects=False)
    assert response.status_code == 303
    ui.cookies.set(COOKIE, session_id or "", path=UI)
    assert ui.get(f"{UI}/", follow_redirects=False).status_code == 303


def test_idle_session_expires(ui: TestClient, clock: Clock) -> None:
    """A session unused for more than twelve hours is over."""
    clock.advance(13 * 3600)
    assert ui.get(f"{UI}/", follow_redirects=False).status_code == 303


def test_pages_carry_a_strict_content_security_policy(ui: TestClient) -> None:
    """Pages forbid inline and foreign scripts, framing and caching."""
    headers = ui.get(f"{UI}/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"


def test_static_files_are_served_by_the_box(client: TestClient) -> None:
    """The stylesheet and the script come from the box itself."""
    assert "stat" in client.get(f"{UI}/static/dashboard.css").text
    assert "api/overview" in client.get(f"{UI}/static/dashboard.js").text


# -- CSRF and the forms ----------------------------------------------------------------------


@pytest.mark.parametrize("form", [{}, {"csrf": "forged"}], ids=["missing", "wrong"])
def test_redrive_without_the_csrf_token_is_403_and_changes_nothing(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters, form: dict[str, str]
) -> None:
    """A redrive form without the session's CSRF token is refused and redrives nothing."""
    [dead] = make_dead_letters(box.db)
    response = ui.post(f"{UI}/dlq/redrive", data={"id": dead, **form}, follow_redirects=False)
    assert response.status_code == 403
    assert one(box.db, "SELECT redriven_at FROM dead_letters WHERE id = ?", dead)[0] is None


def test_discard_without_the_csrf_token_is_403_and_changes_nothing(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """A discard form without the CSRF token is refused and the dead letter stays."""
    [dead] = make_dead_letters(box.db)
    response = ui.post(f"{UI}/dlq/{dead}/discard", data={}, follow_redirects=False)
    assert response.status_code == 403
    assert one(box.db, "SELECT count(*) FROM dead_letters WHERE id = ?", dead)[0] == 1


def test_form_without_a_session_changes_nothing(
    client: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """A form posted without a session goes to the login and redrives nothing."""
    [dead] = make_dead_letters(box.db)
    response = client.post(f"{UI}/dlq/redrive", data={"id": dead}, follow_redirects=False)
    assert response.status_code == 303 and "/login" in response.headers["location"]
    assert one(box.db, "SELECT redriven_at FROM dead_letters WHERE id = ?", dead)[0] is None


def test_redrive_button_puts_the_delivery_back_in_the_outbox(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """The Redrive button redrives that one dead letter and says so on the next page."""
    first, second = make_dead_letters(box.db, 2)
    response = ui.post(f"{UI}/dlq/redrive", data={"id": first, "csrf": csrf_of(ui)})
    assert response.status_code == 200 and "Redriven 1." in response.text
    row = one(
        box.db,
        "SELECT d.state, x.redriven_at FROM dead_letters AS x "
        "JOIN deliveries AS d ON d.seq = x.delivery_seq WHERE x.id = ?",
        first,
    )
    assert row["state"] == "pending" and row["redriven_at"] is not None
    assert one(box.db, "SELECT count(*) FROM outbox")[0] == 1
    assert one(box.db, "SELECT redriven_at FROM dead_letters WHERE id = ?", second)[0] is None


def test_redrive_all_redrives_only_the_filter(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """Redrive all with an instance filter redrives that instance's dead letters only."""
    mine = make_dead_letters(box.db, 2, instance="shop")
    other = make_dead_letters(box.db, 1, instance="blog")
    response = ui.post(
        f"{UI}/dlq/redrive",
        data={"plugin": "generic", "instance": "shop", "csrf": csrf_of(ui)},
        follow_redirects=False,
    )
    assert response.headers["location"] == f"{UI}/dlq?plugin=generic&instance=shop"
    open_ids = {r[0] for r in box.db.read("SELECT id FROM dead_letters WHERE redriven_at IS NULL")}
    assert open_ids == set(other) and not open_ids & set(mine)


def test_discard_button_drops_the_dead_letter(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """The Discard button deletes that dead letter."""
    [dead] = make_dead_letters(box.db)
    response = ui.post(f"{UI}/dlq/{dead}/discard", data={"csrf": csrf_of(ui)})
    assert response.status_code == 200 and f"Discarded {dead}." in response.text
    assert one(box.db, "SELECT count(*) FROM dead_letters")[0] == 0


# -- pages -----------------------------------------------------------------------------------


def test_overview_shows_backlog_dead_letters_and_charts(
    ui: TestClient, box: Box, make_deliveries: MakeDeliveries, make_dead_letters: MakeDeadLetters
) -> None:
    """The overview counts the backlog and open dead letters and draws both charts."""
    make_deliveries(box.db, 3)
    make_dead_letters(box.db, 1)
    data = ui.get(f"{UI}/api/overview").json()
    assert data["stats"]["pending"] == 3 and data["stats"]["outbox_depth"] == 3
    assert data["stats"]["dead_open"] == 1 and data["stats"]["dead_hour"] == 1
    assert data["stats"]["received_hour"] == 4
    assert data["charts"]["backlog"]["last"]["backlog"] == 3
    page = ui.get(f"{UI}/").text
    assert 'data-line="throughput.received"' in page and 'data-line="backlog.backlog"' in page


def test_backlog_chart_replays_the_hour(
    ui: TestClient, box: Box, clock: Clock, make_deliveries: MakeDeliveries
) -> None:
    """The backlog series rises at the minute deliveries arrived and not before."""
    make_deliveries(box.db, 2, received_at=T0 - 600)
    backlog = ui.get(f"{UI}/api/overview").json()["charts"]["backlog"]
    assert backlog["max"] == 2 and backlog["last"]["backlog"] == 2
    points = [float(p.split(",")[1]) for p in backlog["series"]["backlog"]["line"].split()]
    assert points[0] > points[-1]  # flat at zero an hour ago (bottom), at the top now


def test_deliveries_page_lists_and_filters_by_state(
    ui: TestClient, box: Box, make_deliveries: MakeDeliveries, make_dead_letters: MakeDeadLetters
) -> None:
    """The deliveries page lists deliveries and keeps only the chosen state."""
    [pending] = make_deliveries(box.db)
    make_dead_letters(box.db)
    everything = ui.get(f"{UI}/deliveries").text
    dead_only = ui.get(f"{UI}/deliveries?state=dead").text
    assert pending in everything and everything.count("data-delivery=") == 2
    assert pending not in dead_only and dead_only.count("data-delivery=") == 1


def test_search_by_provider_id_opens_the_delivery(ui: TestClient, box: Box) -> None:
    """Searching a provider delivery id goes straight to that delivery."""
    delivery_id = add_delivery(box.db, 1)
    response = ui.get(f"{UI}/deliveries?q=evt-1", follow_redirects=False)
    assert response.headers["location"] == f"{UI}/deliveries/{delivery_id}"


def test_search_matching_several_deliveries_lists_them(ui: TestClient, box: Box) -> None:
    """A provider id found under two instances lists both deliveries."""
    first = add_delivery(box.db, 1)
    second = add_delivery(
        box.db, 2, id="msg_dash_other", instance_id="other", provider_delivery_id="evt-1"
    )
    page = ui.get(f"{UI}/deliveries?q=evt-1").text
    assert page.count("data-delivery=") == 2 and first in page and second in page


def test_search_by_webhook_id_opens_the_delivery(ui: TestClient, box: Box) -> None:
    """Searching the webhook-id sent to targets goes straight to that delivery."""
    delivery_id = add_delivery(box.db, 1)
    response = ui.get(f"{UI}/deliveries?q={delivery_id}", follow_redirects=False)
    assert response.headers["location"] == f"{UI}/deliveries/{delivery_id}"


def test_delivery_page_shows_what_was_received_and_each_attempt(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """A delivery's page shows its headers, its body and each attempt with its answer."""
    make_dead_letters(box.db)
    delivery_id = one(box.db, "SELECT id FROM deliveries")[0]
    page = ui.get(f"{UI}/deliveries/{delivery_id}").text
    assert "content-type" in page or "application/json" in page
    assert "&#34;n&#34;: 1" in page or "&quot;n&quot;: 1" in page  # the JSON body, escaped
    assert "HTTP 500" in page and ">500<" in page


def test_binary_body_is_shown_as_base64(ui: TestClient, box: Box) -> None:
    """A body that is not UTF-8 is shown as base64."""
    delivery_id = add_delivery(box.db, 1, body=b"\xff\x00\xfe", content_type="image/png")
    page = ui.get(f"{UI}/deliveries/{delivery_id}").text
    assert "/wD+" in page and "base64" in page


def test_long_body_is_truncated_for_display(ui: TestClient, box: Box) -> None:
    """A large body is cut for display, and the page says so."""
    delivery_id = add_delivery(box.db, 1, body=b"a" * 40_000, content_type="text/plain")
    page = ui.get(f"{UI}/deliveries/{delivery_id}").text
    assert "a" * 16_384 in page and "a" * 16_385 not in page and "Truncated" in page


def test_unknown_delivery_is_a_404_page(ui: TestClient) -> None:
    """An unknown delivery id answers a 404 page."""
    assert ui.get(f"{UI}/deliveries/msg_nope").status_code == 404


def test_lanes_page_shows_a_waiting_conversation(ui: TestClient, box: Box) -> None:
    """A conversation with queued events appears with its count."""
    for n in (1, 2, 3):
        add_delivery(box.db, n, conversation="conv-42")
    page = ui.get(f"{UI}/lanes").text
    assert "conv-42" in page and '<td data-label="waiting">3</td>' in page


def test_dead_letters_page_offers_redrive_and_discard(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """Each dead letter is listed with its Redrive and Discard buttons."""
    [dead] = make_dead_letters(box.db)
    page = ui.get(f"{UI}/dlq").text
    assert f'data-dead-letter="{dead}"' in page
    assert f'action="{UI}/dlq/{dead}/discard"' in page and ">Redrive</button>" in page


def test_rejections_page_shows_the_reason(ui: TestClient, admin_headers: dict[str, str]) -> None:
    """A request that failed verification shows up with its reason under its instance."""
    ui.post(
        "/admin/instances",
        headers=admin_headers,
        json={"plugin": "generic", "instance": "shop", "secret": "right-secret-value"},
    )
    body = b'{"a": 1}'
    rejected = ui.post(
        "/ingress/generic/shop/events",
        content=body,
        headers={"content-type": "application/json", **sign_generic("wrong-secret-value", body)},
    )
    assert rejected.status_code == 401
    page = ui.get(f"{UI}/rejections").text
    assert "generic / shop" in page and rejected.json()["error"]["code"] in page


def test_a_kept_request_is_admitted_from_the_rejections_page(
    ui: TestClient, admin_headers: dict[str, str], box: Box
) -> None:
    """A wrong-secret request is listed with an Admit form; after the secret is fixed, the form
    (with the CSRF token) admits it as a delivery and the page says so."""
    ui.post(
        "/admin/instances",
        headers=admin_headers,
        json={"plugin": "generic", "instance": "shop", "secret": "not-the-provider-one"},
    )
    body = b'{"a": 1}'
    signed = sign_generic("the-provider-secret", body)
    assert ui.post("/ingress/generic/shop/events", content=body, headers=signed).status_code == 401
    box.db.write(lambda conn: None)  # the kept row is written after the answer: let it commit
    page = ui.get(f"{UI}/rejections").text
    [kept] = re.findall(r'data-kept="(\d+)"', page)
    action = f"{UI}/rejections/generic/shop/{kept}/admit"
    assert f'action="{action}"' in page and ">Admit</button>" in page

    refused = ui.post(action, data={"csrf": "forged"})
    assert refused.status_code == 403
    still = ui.post(action, data={"csrf": csrf_of(ui)})
    assert "Still rejected: bad_signature." in still.text
    rotated = ui.post(
        "/admin/instances/generic/shop/rotate-secret",
        headers=admin_headers,
        json={"secret": "the-provider-secret", "grace_seconds": 0},
    )
    assert rotated.status_code == 200
    admitted = ui.post(action, data={"csrf": csrf_of(ui)})
    assert "Admitted as delivery msg_" in admitted.text
    assert f'data-kept="{kept}"' not in admitted.text
    row = box.db.read_one("SELECT count(*) FROM deliveries")
    assert row is not None and row[0] == 1


def test_instances_page_shows_urls_but_no_secret(
    ui: TestClient, admin_headers: dict[str, str]
) -> None:
    """Instances are listed with their ingress URLs to copy and none of their secrets."""
    created = ui.post(
        "/admin/instances",
        headers=admin_headers,
        json={"plugin": "generic", "instance": "shop", "target_url": "http://127.0.0.1:9/hook"},
    ).json()
    page = ui.get(f"{UI}/instances").text
    assert "http://testserver/ingress/generic/shop/events" in page and "data-copy=" in page
    for secret in ("secret", "verify_token", "outbound_secret"):
        assert created[secret] not in page


BRIDGE = {
    "id": "shop",
    "gateway": {
        "kind": "evolution",
        "url": "http://evolution:8080",
        "api_key": "evolution-api-key-0123",
        "session": HOSTILE,
    },
    "chatwoot": {
        "url": "http://chatwoot:3000",
        "account_id": 3,
        "inbox_id": 7,
        "api_token": "chatwoot-api-token-0123",
    },
}


def test_bridges_page_lists_each_bridge_with_its_instances_and_mappings(
    ui: TestClient, admin_headers: dict[str, str], box: Box
) -> None:
    """A row per bridge: gateway kind, session (escaped), inbox, links to both instances'
    deliveries, the mapping count; no secret, key or token; the nav links to it."""
    created = ui.post("/admin/bridges", headers=admin_headers, json=BRIDGE).json()
    box.db.write(mappings.upsert(mappings.Upsert("chatwoot", "shop", "s", "chat", "9"), T0))
    page = ui.get(f"{UI}/bridges").text
    assert f'href="{UI}/bridges" aria-current="page">Bridges</a>' in page
    row = page[page.index("<tbody>") : page.index("</tbody>")]
    assert '<td data-label="gateway">evolution</td>' in row
    assert HOSTILE not in row and "&lt;script&gt;" in row
    assert '7 <span class="muted">(account 3)</span>' in row
    for plugin in ("evolution", "chatwoot"):
        link = f'href="{UI}/deliveries?plugin={plugin}&amp;instance=shop">{plugin}/shop</a>'
        assert link in row
    assert '<td data-label="mappings">1</td>' in row
    secrets = (created["gateway"]["secret"], created["chatwoot"]["secret"])
    for secret in (*secrets, "evolution-api-key-0123", "chatwoot-api-token-0123"):
        assert secret not in page


def test_bridges_page_shows_each_instance_enabled_pending_and_dead_letters(
    ui: TestClient,
    admin_headers: dict[str, str],
    box: Box,
    make_deliveries: MakeDeliveries,
    make_dead_letters: MakeDeadLetters,
) -> None:
    """Each side of a bridge says whether it is enabled, how many deliveries wait, how many
    dead letters are open (linked to them) and how its newest delivery went."""
    ui.post("/admin/bridges", headers=admin_headers, json=BRIDGE)
    make_dead_letters(box.db, 2, plugin="evolution", instance="shop")
    make_deliveries(box.db, 3, plugin="evolution", instance="shop")
    box.db.write(instances.update("chatwoot", "shop", T0, enabled=False))
    row = ui.get(f"{UI}/bridges").text
    dlq = f'href="{UI}/dlq?plugin=evolution&amp;instance=shop">2 dead letters</a>'
    assert f"enabled, 3 pending, <a {dlq}, last delivery pending" in row
    assert "disabled, 0 pending, 0 dead letters, last delivery none yet" in row


def test_bridges_page_without_bridges_says_how_to_make_one(ui: TestClient) -> None:
    """No bridges: a line naming the API and the CLI command."""
    assert "ingress-box bridges add" in ui.get(f"{UI}/bridges").text


def test_hostile_values_are_escaped(ui: TestClient, box: Box) -> None:
    """A conversation id that is markup is shown as text on every page that shows it."""
    delivery_id = add_delivery(box.db, 1, conversation=HOSTILE, provider_delivery_id=HOSTILE)
    for path in ("/lanes", "/deliveries", f"/deliveries/{delivery_id}"):
        page = ui.get(UI + path).text
        assert HOSTILE not in page, path
        assert "&lt;script&gt;" in page, path


@pytest.fixture
def many(box: Box) -> None:
    """55 deliveries: more than one page."""
    for n in range(1, 56):
        add_delivery(box.db, n)


@pytest.mark.usefixtures("many")
def test_deliveries_page_has_a_next_page(ui: TestClient) -> None:
    """More than a page of deliveries offers an Older link that continues the list."""
    first = ui.get(f"{UI}/deliveries").text
    match = re.search(r'href="(/admin/ui/deliveries\?[^"]*cursor=[^"]+)"', first)
    assert match is not None and first.count("data-delivery=") == 50
    second = ui.get(match.group(1).replace("&amp;", "&")).text
    assert second.count("data-delivery=") == 5


def test_bad_cursor_is_a_400_page(ui: TestClient) -> None:
    """A cursor the server did not give answers a 400 page, not a 500."""
    assert ui.get(f"{UI}/deliveries?cursor=zz").status_code == 400
