"""The admin API, the dashboard, logs and secrets against a hostile caller: the real app, a real
SQLite file, the lifespan running.

Every hostile value answers 400 ``invalid_input`` in the one error shape and commits nothing; a
row that cannot be shown never breaks a list; wrong tokens are throttled per client address;
log lines cannot be forged; credentials in target URLs and stored paths are masked.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, T0, Clock, MakeDeadLetters, Reply
from postgres import outside
from starlette.testclient import TestClient

from ingress_box import extract, logs
from ingress_box.app import App
from ingress_box.config import load_settings
from ingress_box.errors import ConfigError
from ingress_box.store.deliveries import NewDelivery, accept
from ingress_box.web.auth import FAILURE_BURST, Throttle
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

Headers = dict[str, str]
UI = "/admin/ui"
LONE = "\ud800"  # a lone UTF-16 surrogate: valid as a JSON escape, not encodable as UTF-8


def raw_json(value: Any) -> bytes:
    """``value`` as JSON text; lone surrogates become ``\\ud800`` escapes (ensure_ascii)."""
    return json.dumps(value).encode()


def send(client: TestClient, method: str, path: str, body: Any, headers: Headers) -> Reply:
    return client.request(
        method,
        path,
        content=raw_json(body),
        headers={**headers, "content-type": "application/json"},
    )


def assert_invalid_input(response: Reply) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"]
    assert body["error"]["code"] == "invalid_input", body


def rows(box: Box, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in box.db.read(sql)]


def cursor_of(key: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.fixture
def shop(client: TestClient, admin_headers: Headers) -> dict[str, Any]:
    """An instance generic/shop, as the API shows it."""
    response = client.post(
        "/admin/instances", headers=admin_headers, json={"plugin": "generic", "instance": "shop"}
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = client.get("/admin/instances/generic/shop", headers=admin_headers).json()
    return data


# -- 13. lone surrogates and deep nesting in the admin API ----------------------------------

INSTANCE_VALUES = {
    "target_url": f"http://example.com/{LONE}",
    "secret": f"whsec_{LONE}",
    "verify_token": LONE,
    "session": LONE,
    "handler": LONE,
    "lane_policy": LONE,
    "config": {"headers": {"x-key": LONE}},
    "config-key": {LONE: 1},
}


def _field(name: str) -> str:
    return name.split("-")[0]


@pytest.mark.parametrize("name", sorted(INSTANCE_VALUES))
def test_a_lone_surrogate_in_a_new_instance_is_400_and_creates_nothing(
    client: TestClient, admin_headers: Headers, box: Box, name: str
) -> None:
    """Every field of a create with a lone surrogate answers 400 invalid_input; no row."""
    body = {"plugin": "generic", "instance": "shop", _field(name): INSTANCE_VALUES[name]}
    assert_invalid_input(send(client, "POST", "/admin/instances", body, admin_headers))
    assert rows(box, "SELECT instance_id FROM instances") == []


@pytest.mark.parametrize("body", [{"plugin": LONE, "instance": "shop"}, {"instance": LONE}])
def test_a_lone_surrogate_in_the_key_of_a_new_instance_is_400(
    client: TestClient, admin_headers: Headers, box: Box, body: dict[str, Any]
) -> None:
    """A surrogate in the plugin or instance id answers 400 and creates nothing."""
    assert_invalid_input(
        send(client, "POST", "/admin/instances", {"plugin": "generic", **body}, admin_headers)
    )
    assert rows(box, "SELECT instance_id FROM instances") == []


@pytest.mark.parametrize("name", sorted(n for n in INSTANCE_VALUES if _field(n) not in ("secret",)))
def test_a_lone_surrogate_in_a_patch_is_400_and_changes_nothing(
    client: TestClient, admin_headers: Headers, shop: dict[str, Any], name: str
) -> None:
    """Every patchable field with a lone surrogate answers 400; the instance is unchanged."""
    path = "/admin/instances/generic/shop"
    assert_invalid_input(
        send(client, "PATCH", path, {_field(name): INSTANCE_VALUES[name]}, admin_headers)
    )
    assert client.get(path, headers=admin_headers).json() == shop


def test_a_lone_surrogate_in_a_rotated_secret_is_400_and_keeps_the_secret(
    client: TestClient, admin_headers: Headers, box: Box, shop: dict[str, Any]
) -> None:
    """Rotating to a secret with a lone surrogate answers 400; the old secret stays."""
    before = rows(box, "SELECT secret, previous_secret FROM instances")
    path = "/admin/instances/generic/shop/rotate-secret"
    assert_invalid_input(send(client, "POST", path, {"secret": f"whsec_{LONE}"}, admin_headers))
    assert rows(box, "SELECT secret, previous_secret FROM instances") == before


@pytest.mark.parametrize(
    "body", [{"ids": [LONE]}, {"plugin": LONE}, {"instance": LONE}, {"ids": ["dlq_x", LONE]}]
)
def test_a_lone_surrogate_in_a_redrive_is_400_and_redrives_nothing(
    client: TestClient,
    admin_headers: Headers,
    box: Box,
    make_dead_letters: MakeDeadLetters,
    body: dict[str, Any],
) -> None:
    """A redrive naming ids or filters with a lone surrogate answers 400; nothing moves."""
    make_dead_letters(box.db, 2)
    assert_invalid_input(send(client, "POST", "/admin/dlq/redrive", body, admin_headers))
    assert rows(box, "SELECT count(*) FROM dead_letters WHERE redriven_at IS NULL") == [(2,)]


MAPPING = {"plugin": "generic", "instance": "main", "session": "s1", "chat": "c1"}


@pytest.mark.parametrize(
    "change",
    [
        {"plugin": LONE},
        {"instance": LONE},
        {"session": LONE},
        {"chat": LONE},
        {"conversation": LONE},
        {"state": LONE},
        {"metadata": {"note": LONE}},
        {"metadata": {LONE: "x"}},
        {"metadata": nested(500)},
    ],
)
def test_a_hostile_mapping_is_400_and_stores_nothing(
    client: TestClient, admin_headers: Headers, box: Box, change: dict[str, Any]
) -> None:
    """Every mapping field with a lone surrogate (or metadata nested deep) answers 400."""
    body = {**MAPPING, "conversation": "v1", **change}
    assert_invalid_input(send(client, "PUT", "/admin/mappings", body, admin_headers))
    assert rows(box, "SELECT count(*) FROM conversation_mappings") == [(0,)]


@pytest.mark.parametrize(
    "change", [{"metadata": {"note": LONE}}, {"metadata": nested(500)}, {"state": LONE}]
)
def test_a_hostile_mapping_patch_is_400_and_changes_nothing(
    client: TestClient, admin_headers: Headers, change: dict[str, Any]
) -> None:
    """A state change with hostile metadata or state answers 400; the mapping is unchanged."""
    made = client.put(
        "/admin/mappings", json={**MAPPING, "conversation": "v1"}, headers=admin_headers
    ).json()
    path = f"/admin/mappings/{made['id']}"
    before = client.get(path, headers=admin_headers).json()
    assert_invalid_input(send(client, "PATCH", path, {"state": "human", **change}, admin_headers))
    assert client.get(path, headers=admin_headers).json() == before


@pytest.mark.parametrize("path", ["/admin/instances", f"{UI}/instances"])
def test_a_cursor_holding_a_lone_surrogate_is_400(
    client: TestClient, admin_headers: Headers, path: str
) -> None:
    """A forged cursor whose key holds a lone surrogate is refused, not a 500."""
    assert client.post(f"{UI}/login", data={"token": ADMIN_TOKEN}).status_code == 200
    response = client.get(path, params={"cursor": cursor_of([LONE, "x"])}, headers=admin_headers)
    assert response.status_code == 400, response.text
    if path.startswith("/admin/instances"):
        assert_invalid_input(response)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_config_nested_deep_is_400_and_commits_nothing(
    client: TestClient, admin_headers: Headers, box: Box, shop: dict[str, Any], method: str
) -> None:
    """A config nested 500 deep answers 400, on create and on patch, and stores nothing."""
    if method == "POST":
        path, body = "/admin/instances", {"plugin": "generic", "instance": "deep"}
    else:
        path, body = "/admin/instances/generic/shop", {}
    assert_invalid_input(send(client, method, path, {**body, "config": nested(500)}, admin_headers))
    assert rows(box, "SELECT instance_id, config FROM instances") == [("shop", "{}")]


def test_a_config_too_large_is_400(client: TestClient, admin_headers: Headers, box: Box) -> None:
    """A config of more JSON than an instance needs answers 400 and creates nothing."""
    body = {"plugin": "generic", "instance": "big", "config": {"x": "y" * 200_000}}
    assert_invalid_input(send(client, "POST", "/admin/instances", body, admin_headers))
    assert rows(box, "SELECT instance_id FROM instances") == []


def test_a_config_of_moderate_depth_is_kept(client: TestClient, admin_headers: Headers) -> None:
    """Nesting a real configuration needs is still accepted and read back as sent."""
    config = nested(10)
    response = client.post(
        "/admin/instances",
        json={"plugin": "generic", "instance": "ok", "config": config},
        headers=admin_headers,
    )
    assert response.status_code == 201, response.text
    got = client.get("/admin/instances/generic/ok", headers=admin_headers).json()
    assert got["config"] == config


def store_raw_instance(box: Box, instance_id: str, config: str) -> None:
    """A row as an older version could leave it, written past today's checks."""
    with outside(box.db) as conn:
        conn.execute(
            "INSERT INTO instances (plugin_id, instance_id, enabled, handler, secret, "
            "outbound_secret, lane_policy, config, created_at, updated_at) "
            "VALUES ('generic', ?, 1, 'forward', 's', 'o', 'progress', ?, ?, ?)",
            (instance_id, config, T0, T0),
        )


def test_one_unreadable_row_never_breaks_a_list(
    client: TestClient, admin_headers: Headers, box: Box, shop: dict[str, Any]
) -> None:
    """A stored config that cannot be answered (a lone surrogate) shows as null, named in
    "unreadable"; the other rows, the row itself and the dashboard still answer."""
    store_raw_instance(box, "bad", json.dumps({"note": LONE}))
    response = client.get("/admin/instances", headers=admin_headers)
    assert response.status_code == 200, response.text
    items = {(i["plugin"], i["instance"]): i for i in response.json()["items"]}
    assert items[("generic", "shop")] == shop
    bad = items[("generic", "bad")]
    assert (bad["unreadable"], bad["config"], bad["handler"]) == (["config"], None, "forward")
    item = client.get("/admin/instances/generic/bad", headers=admin_headers)
    assert item.status_code == 200 and item.json()["unreadable"] == ["config"]
    assert client.post(f"{UI}/login", data={"token": ADMIN_TOKEN}).status_code == 200
    assert client.get(f"{UI}/instances").status_code == 200


def test_a_deep_config_stored_before_the_checks_still_answers(
    client: TestClient, admin_headers: Headers, box: Box, shop: dict[str, Any]
) -> None:
    """A config nested 500 deep, already stored, lists and reads back whole (it was a 500)."""
    store_raw_instance(box, "deep", json.dumps(nested(500)))
    response = client.get("/admin/instances", headers=admin_headers)
    assert response.status_code == 200, response.text
    assert [i["instance"] for i in response.json()["items"]] == ["deep", "shop"]
    item = client.get("/admin/instances/generic/deep", headers=admin_headers)
    assert item.status_code == 200 and item.json()["config"] == nested(500)


def test_a_stored_credential_header_with_a_lone_surrogate_is_masked_not_a_500(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """Extra headers of a config are masked on read, whatever they hold."""
    store_raw_instance(box, "hdr", json.dumps({"headers": {"x-key": LONE}}))
    item = client.get("/admin/instances/generic/hdr", headers=admin_headers)
    assert item.status_code == 200 and item.json()["config"] == {"headers": {"x-key": "****"}}


# -- 12. the dashboard's pretty printer -----------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"[" * 5000, b"[" * 5000 + b"]" * 5000, b"[" * 900 + b"]" * 900, b"{" * 5000]
)
def test_a_delivery_page_with_a_deeply_nested_body_renders(
    client: TestClient, box: Box, body: bytes
) -> None:
    """A body of thousands of nested brackets shows as text; the page answers 200."""
    delivery = NewDelivery(
        id="msg_deep",
        plugin_id="generic",
        instance_id="main",
        route="events",
        provider_delivery_id="deep",
        conversation=None,
        method="POST",
        subpath="",
        content_type="application/json",
        headers="{}",
        body=body,
        received_at=T0,
    )
    box.db.write(lambda conn: accept(conn, delivery))
    assert client.post(f"{UI}/login", data={"token": ADMIN_TOKEN}).status_code == 200
    page = client.get(f"{UI}/deliveries/msg_deep")
    assert page.status_code == 200
    assert "[[[[" in page.text or "{{{{" in page.text


# -- 14. token guessing ---------------------------------------------------------------------


def other_client(app: App, host: str) -> TestClient:
    """A second client address on the same running app (the first client ran the lifespan)."""
    return TestClient(app, client=(host, 40000))


def test_the_api_throttles_wrong_tokens_per_client(
    client: TestClient, app: App, admin_headers: Headers, clock: Clock
) -> None:
    """After a few wrong tokens the next try gets 429 with Retry-After, even with the right
    token; another address is unaffected; after waiting, the right token works again."""
    wrong = {"authorization": "Bearer not-the-admin-token"}
    answers = [client.get("/admin/plugins", headers=wrong).status_code for _ in range(20)]
    assert answers[:FAILURE_BURST] == [401] * FAILURE_BURST
    assert answers[FAILURE_BURST:] == [429] * (20 - FAILURE_BURST)
    refused = client.get("/admin/plugins", headers=admin_headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    wait = int(refused.headers["retry-after"])
    assert wait >= 1
    assert (
        other_client(app, "192.0.2.7").get("/admin/plugins", headers=admin_headers).status_code
        == 200
    )
    clock.advance(wait)
    assert client.get("/admin/plugins", headers=admin_headers).status_code == 200


def test_a_good_token_spends_nothing(client: TestClient, admin_headers: Headers) -> None:
    """Any number of requests with the right token are never throttled."""
    answers = {client.get("/admin/plugins", headers=admin_headers).status_code for _ in range(30)}
    assert answers == {200}


def test_requests_without_a_token_spend_nothing(client: TestClient) -> None:
    """No Authorization header is no guess: any number of them stay 401, never 429."""
    answers = {client.get("/admin/plugins").status_code for _ in range(3 * FAILURE_BURST)}
    assert answers == {401}


def test_the_throttle_remembers_a_bounded_number_of_clients() -> None:
    """Past max_clients the address unseen longest is forgotten: memory stays bounded."""
    throttle = Throttle(burst=1, refill_seconds=60, max_clients=2)
    for key in ("a", "b", "c"):
        throttle.spend(key, T0)
    assert [throttle.wait(key, T0) for key in ("a", "b", "c")] == [0, 60, 60]


def test_the_dashboard_login_throttles_wrong_tokens(
    client: TestClient, app: App, clock: Clock
) -> None:
    """The login form answers 429 with Retry-After after a few wrong tokens from one address."""
    answers = [
        client.post(f"{UI}/login", data={"token": f"guess-{n}"}).status_code for n in range(10)
    ]
    assert answers == [401] * FAILURE_BURST + [429] * (10 - FAILURE_BURST)
    refused = client.post(f"{UI}/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "set-cookie" not in refused.headers
    elsewhere = other_client(app, "198.51.100.9").post(
        f"{UI}/login", data={"token": ADMIN_TOKEN}, follow_redirects=False
    )
    assert elsewhere.status_code == 303


def test_guesses_on_the_api_count_on_the_dashboard_and_metrics(client: TestClient) -> None:
    """One budget per address whichever door it knocks on."""
    wrong = {"authorization": "Bearer not-the-admin-token"}
    for _ in range(FAILURE_BURST):
        assert client.get("/admin/plugins", headers=wrong).status_code == 401
    assert client.post(f"{UI}/login", data={"token": "guess"}).status_code == 429
    assert client.get("/metrics", headers=wrong).status_code == 429


def test_ipv6_clients_share_a_budget_per_64_prefix(app: App, client: TestClient) -> None:
    """Addresses of one IPv6 /64 (one site's) share a budget, so rotating them gains nothing."""
    wrong = {"authorization": "Bearer not-the-admin-token"}
    answers = [
        other_client(app, f"2001:db8::{n:x}").get("/admin/plugins", headers=wrong).status_code
        for n in range(FAILURE_BURST + 1)
    ]
    assert answers == [401] * FAILURE_BURST + [429]


def test_wrong_tokens_are_logged_without_the_token(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refused token is one warning line naming the client address, never the token."""
    caplog.set_level(logging.WARNING, logger="ingress_box.web")
    guess = "Bearer guess-0123456789abcdef"
    assert client.get("/admin/plugins", headers={"authorization": guess}).status_code == 401
    assert client.post(f"{UI}/login", data={"token": "guess-fedcba"}).status_code == 401
    refused = [r for r in caplog.records if r.getMessage() == "admin token refused"]
    assert len(refused) == 2
    assert all(r.fields["client"] == "testclient" for r in refused)  # type: ignore[attr-defined]
    for record in refused:
        line = logs.TextFormatter().format(record)
        assert "guess" not in line and "\n" not in line


@pytest.mark.parametrize(
    "token", ["q", "short-token", " " * 20, "sixteen chars ok", "tab\tsep-0123456789"]
)
def test_a_weak_configured_token_is_refused(token: str) -> None:
    """A token under 16 characters or with whitespace is a config error naming the variable,
    without the token in it."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"INGRESS_BOX_ADMIN_TOKEN": token})
    message = str(caught.value)
    assert "INGRESS_BOX_ADMIN_TOKEN" in message and "\n" not in message
    assert not token.strip() or token.strip() not in message


def test_a_strong_configured_token_is_accepted() -> None:
    """Sixteen visible characters are enough."""
    assert str(load_settings({"INGRESS_BOX_ADMIN_TOKEN": "0123456789abcdef"}).admin_token) == (
        "0123456789abcdef"
    )


# -- 15. log injection ----------------------------------------------------------------------


def test_a_newline_in_a_field_cannot_forge_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Control characters in key=value fields are escaped: one record is one line."""
    log = logging.getLogger("ingress_box.test")
    caplog.set_level(logging.INFO, logger="ingress_box.test")
    forged = "x\n2024-01-01 00:00:00,000 INFO ingress_box.web: admin login ok client=1.2.3.4"
    log.info("attempt", extra={"fields": {"error": forged, "route": "a\r\x1b[31mb\x00"}})
    line = logs.TextFormatter().format(caplog.records[-1])
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert "error=x\\n2024-01-01" in line
    assert "route=a\\r\\x1b[31mb\\x00" in line


def test_a_percent_encoded_newline_in_a_path_stays_on_its_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A request to /ingress/... with %0A in the route logs one line."""
    caplog.set_level(logging.INFO, logger="ingress_box")
    client.post("/ingress/generic/main/ev%0Aforged%20line", content=b"{}")
    lines = [logs.TextFormatter().format(r) for r in caplog.records if r.getMessage() == "request"]
    assert lines, "the request was not logged"
    assert all("\n" not in line for line in lines)
    assert any("route=ev\\nforged line" in line for line in lines), lines


def test_a_message_with_a_newline_is_escaped_too(caplog: pytest.LogCaptureFixture) -> None:
    """A message built from outside text (a %s argument) cannot forge a line either."""
    log = logging.getLogger("ingress_box.test")
    caplog.set_level(logging.INFO, logger="ingress_box.test")
    log.warning("cannot commit %s", "a\nb")
    assert logs.TextFormatter().format(caplog.records[-1]).endswith("cannot commit a\\nb")


# -- 22. credentials in target URLs and stored paths ----------------------------------------


def test_the_password_of_a_target_url_is_masked_on_read(
    client: TestClient, admin_headers: Headers
) -> None:
    """http://user:pass@host shows as http://user:****@host in every answer and on the page."""
    url = "http://hook-user:s3cr3t-pass@127.0.0.1:9/in?x=1"
    created = client.post(
        "/admin/instances",
        json={"plugin": "generic", "instance": "shop", "target_url": url},
        headers=admin_headers,
    )
    assert created.status_code == 201
    masked = "http://hook-user:****@127.0.0.1:9/in?x=1"
    answers = [
        created.json(),
        client.get("/admin/instances/generic/shop", headers=admin_headers).json(),
        client.get("/admin/instances", headers=admin_headers).json()["items"][0],
        client.patch(
            "/admin/instances/generic/shop", json={"enabled": True}, headers=admin_headers
        ).json(),
    ]
    assert [a["target_url"] for a in answers] == [masked] * 4
    assert client.post(f"{UI}/login", data={"token": ADMIN_TOKEN}).status_code == 200
    page = client.get(f"{UI}/instances").text
    assert "s3cr3t-pass" not in page and "hook-user:****@127.0.0.1" in page


def test_a_masked_target_url_still_delivers_with_its_password(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """Masking is for reading: the stored URL keeps the password the target needs."""
    url = "http://u:pw-kept@127.0.0.1:9/"
    client.post(
        "/admin/instances",
        json={"plugin": "generic", "instance": "shop", "target_url": url},
        headers=admin_headers,
    )
    assert rows(box, "SELECT target_url FROM instances") == [(url,)]


@pytest.mark.parametrize("name", ["sig", "auth", "code", "session", "Session_Id", "oauth_code"])
def test_credential_query_keys_are_redacted(name: str) -> None:
    """sig=, auth=, code= and session= (and words built of them) are redacted in stored paths."""
    assert extract.redact_query(f"a=1&{name}=hush&b=2") == f"a=1&{name}={extract.REDACTED}&b=2"


@pytest.mark.parametrize("name", ["author", "design", "zipcode", "page"])
def test_ordinary_query_keys_are_kept(name: str) -> None:
    """Names that merely contain those letters are not credentials."""
    assert extract.redact_query(f"{name}=plain") == f"{name}=plain"
