"""The admin API against the real app: a real SQLite file, the lifespan running."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from conftest import T0, MakeDeadLetters, MakeDeliveries, Reply
from starlette.testclient import TestClient

from ingress_box.app import create_app
from ingress_box.config import Settings
from ingress_box.store.instances import mask
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

Headers = dict[str, str]


def create(client: TestClient, headers: Headers, **body: Any) -> Reply:
    body.setdefault("plugin", "generic")
    body.setdefault("instance", "shop")
    return client.post("/admin/instances", json=body, headers=headers)


def created(client: TestClient, headers: Headers, **body: Any) -> dict[str, Any]:
    response = create(client, headers, **body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


# -- auth -----------------------------------------------------------------------------------


def test_no_token_is_401_in_the_error_shape(client: TestClient) -> None:
    """A request without a token is refused with 401, the error shape and a Bearer challenge."""
    response = client.get("/admin/instances")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_wrong_token_is_401(client: TestClient) -> None:
    """A wrong bearer token is refused."""
    response = client.get("/admin/instances", headers={"authorization": "Bearer nope"})
    assert response.status_code == 401


def test_unknown_path_without_token_is_401_not_404(client: TestClient) -> None:
    """Without a token, an unknown admin path does not reveal that it does not exist."""
    assert client.get("/admin/no-such-thing").status_code == 401


def test_token_is_compared_in_constant_time(
    client: TestClient, admin_headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token check goes through hmac.compare_digest."""
    calls = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.get("/admin/plugins", headers=admin_headers).status_code == 200
    digest = hashlib.sha256(admin_headers["authorization"].split()[1].encode()).hexdigest()
    assert (digest.encode(), digest.encode()) in calls


# -- plugins --------------------------------------------------------------------------------


def test_plugins_lists_the_builtins_with_their_routes(
    client: TestClient, admin_headers: Headers
) -> None:
    """GET /admin/plugins lists the built-in plugins and their routes."""
    data = client.get("/admin/plugins", headers=admin_headers).json()
    by_id = {p["id"]: p for p in data["items"]}
    assert {"generic", "meta", "stripe", "telegram"} <= set(by_id)
    assert [r["name"] for r in by_id["generic"]["routes"]] == ["events"]
    assert data["next_cursor"] is None


# -- creating instances ---------------------------------------------------------------------


def test_create_generates_and_shows_every_secret_once(
    client: TestClient, admin_headers: Headers
) -> None:
    """Create answers 201 with generated secret, verify token and whsec_ outbound secret."""
    data = created(client, admin_headers)
    assert data["plugin"] == "generic" and data["instance"] == "shop"
    assert len(data["secret"]) >= 32 and len(data["verify_token"]) >= 24
    assert data["outbound_secret"].startswith("whsec_")


def test_create_answers_the_ingress_url_of_each_route(
    client: TestClient, admin_headers: Headers
) -> None:
    """The ingress URL is the request's base URL plus /ingress/{plugin}/{instance}/{route}."""
    data = created(client, admin_headers)
    assert data["ingress_url"] == "http://testserver/ingress/generic/shop/events"
    assert data["ingress_urls"] == {"events": data["ingress_url"]}


def test_create_uses_the_public_url_when_configured(
    settings: Settings, admin_headers: Headers
) -> None:
    """With a public URL configured, ingress URLs start with it."""
    app = create_app(settings.replace(public_url="https://hooks.example.com"), run_worker=False)
    with TestClient(app) as client:
        data = created(client, admin_headers)
    assert data["ingress_url"] == "https://hooks.example.com/ingress/generic/shop/events"


def test_create_keeps_given_secret_and_verify_token(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """A given secret and verify token are stored as given."""
    created(client, admin_headers, secret="s3cret-given-by-me", verify_token="vt-given-by-me")
    row = box.db.read_one("SELECT secret, verify_token FROM instances")
    assert row is not None and tuple(row) == ("s3cret-given-by-me", "vt-given-by-me")


def test_create_generates_the_secret_in_the_schemes_form(
    client: TestClient, admin_headers: Headers
) -> None:
    """A Standard Webhooks plugin gets a whsec_ secret."""
    assert created(client, admin_headers, plugin="standard-webhooks")["secret"].startswith("whsec_")


def test_create_applies_defaults(client: TestClient, admin_headers: Headers) -> None:
    """A new instance is enabled, uses the plugin's handler and the progress lane policy."""
    data = created(client, admin_headers)
    assert (data["enabled"], data["handler"], data["lane_policy"]) == (True, "forward", "progress")
    assert data["config"] == {} and data["target_url"] is None


def test_create_stores_the_optional_fields(client: TestClient, admin_headers: Headers) -> None:
    """target_url, session, config, lane_policy and enabled are stored."""
    created(
        client,
        admin_headers,
        target_url="https://bot.example/hook",
        session="s1",
        config={"headers": {"x-api-key": "key-for-the-bot-0001"}, "tag": "blue"},
        lane_policy="strict",
        enabled=False,
    )
    data = client.get("/admin/instances/generic/shop", headers=admin_headers).json()
    assert data["target_url"] == "https://bot.example/hook"
    assert (data["session"], data["lane_policy"], data["enabled"]) == ("s1", "strict", False)
    # Headers sent to the target carry its credentials: masked on read like the secrets.
    assert data["config"] == {"headers": {"x-api-key": "****0001"}, "tag": "blue"}


def test_duplicate_create_is_409(client: TestClient, admin_headers: Headers) -> None:
    """Creating an instance that exists answers 409 already_exists."""
    created(client, admin_headers)
    response = create(client, admin_headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_exists"


@pytest.mark.parametrize("instance", ["", "a b", "x" * 65, "é", "a/b", 7, None, ["a"]])
def test_create_with_a_bad_instance_id_is_400(
    client: TestClient, admin_headers: Headers, instance: object
) -> None:
    """An instance id outside ^[A-Za-z0-9_-]{1,64}$ answers 400 invalid_input."""
    response = create(client, admin_headers, instance=instance)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


def test_create_with_an_unknown_plugin_is_400(client: TestClient, admin_headers: Headers) -> None:
    """An unknown plugin answers 400 invalid_input, naming the plugins there are."""
    response = create(client, admin_headers, plugin="nope")
    assert response.status_code == 400
    assert "nope" in response.json()["error"]["message"]
    assert "generic, github" in response.json()["error"]["message"]


def test_create_warns_of_a_generated_secret_the_provider_never_uses(
    client: TestClient, admin_headers: Headers
) -> None:
    """The API still generates Meta's secret (the contract), but the 201 warns it will not
    verify and where the real one is; given, there is no warning."""
    data = created(client, admin_headers, plugin="meta", target_url="http://127.0.0.1:9/h")
    (warning,) = data["warnings"]
    assert "meta's secret is issued by the provider" in warning and "App secret" in warning
    given = created(
        client, admin_headers, plugin="meta", instance="b", secret="s", target_url="http://t/"
    )
    assert given["warnings"] == []


def test_create_warns_of_a_forward_instance_without_target(
    client: TestClient, admin_headers: Headers
) -> None:
    """forward with no target_url is created (201), with a warning that deliveries fail."""
    assert created(client, admin_headers)["warnings"] == [
        "no target_url: every delivery fails until one is set"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/x",
        "http://",
        "not a url",
        "https://h:99999/",
        "http://h/a b",
        "",
        42,
        "javascript:alert(1)",
    ],
)
def test_create_with_a_bad_target_url_is_400(
    client: TestClient, admin_headers: Headers, url: object
) -> None:
    """target_url must be an http(s) URL with a host."""
    assert create(client, admin_headers, target_url=url).status_code == 400


@pytest.mark.parametrize("config", [[], "x", 1, None])
def test_create_with_a_config_that_is_not_an_object_is_400(
    client: TestClient, admin_headers: Headers, config: object
) -> None:
    """config must be a JSON object."""
    assert create(client, admin_headers, config=config).status_code == 400


def test_create_with_an_unknown_lane_policy_is_400(
    client: TestClient, admin_headers: Headers
) -> None:
    """lane_policy is progress or strict."""
    assert create(client, admin_headers, lane_policy="fast").status_code == 400


def test_create_with_an_unknown_field_is_400(client: TestClient, admin_headers: Headers) -> None:
    """A misspelt field is an error, not silently ignored."""
    response = create(client, admin_headers, target="https://h/")
    assert response.status_code == 400
    assert "target" in response.json()["error"]["message"]


# -- reading instances ----------------------------------------------------------------------


def test_secrets_are_masked_on_read(client: TestClient, admin_headers: Headers) -> None:
    """GET and the list show secrets masked: never the values shown at creation."""
    shown = created(client, admin_headers)
    one = client.get("/admin/instances/generic/shop", headers=admin_headers).json()
    listed = client.get("/admin/instances", headers=admin_headers).json()["items"][0]
    for data in (one, listed):
        for name in ("secret", "verify_token", "outbound_secret"):
            assert data[name] == mask(shown[name]) and shown[name] not in str(data)


def test_get_of_an_unknown_instance_is_404(client: TestClient, admin_headers: Headers) -> None:
    """An instance that does not exist answers 404 not_found."""
    response = client.get("/admin/instances/generic/nope", headers=admin_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_list_paginates_with_a_cursor(client: TestClient, admin_headers: Headers) -> None:
    """A limited list gives a cursor that continues where the page ended."""
    for name in ("a", "b", "c"):
        created(client, admin_headers, instance=name)
    first = client.get("/admin/instances?limit=2", headers=admin_headers).json()
    assert [i["instance"] for i in first["items"]] == ["a", "b"]
    rest = client.get(
        "/admin/instances",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=admin_headers,
    ).json()
    assert [i["instance"] for i in rest["items"]] == ["c"]
    assert rest["next_cursor"] is None


def test_list_filters_by_plugin(client: TestClient, admin_headers: Headers) -> None:
    """?plugin= keeps only that plugin's instances."""
    created(client, admin_headers, plugin="generic")
    created(client, admin_headers, plugin="github")
    items = client.get("/admin/instances?plugin=github", headers=admin_headers).json()["items"]
    assert [i["plugin"] for i in items] == ["github"]


# -- changing instances ---------------------------------------------------------------------


def test_patch_changes_the_given_fields(client: TestClient, admin_headers: Headers) -> None:
    """PATCH updates the fields it names and leaves the others."""
    created(client, admin_headers, session="s1")
    response = client.patch(
        "/admin/instances/generic/shop",
        headers=admin_headers,
        json={"target_url": "http://bot:8000/in", "enabled": False},
    )
    assert response.status_code == 200
    data = client.get("/admin/instances/generic/shop", headers=admin_headers).json()
    assert (data["target_url"], data["enabled"], data["session"]) == (
        "http://bot:8000/in",
        False,
        "s1",
    )


def test_patch_refuses_the_secret(client: TestClient, admin_headers: Headers) -> None:
    """Secrets change only through rotate-secret."""
    created(client, admin_headers)
    response = client.patch(
        "/admin/instances/generic/shop", headers=admin_headers, json={"secret": "new"}
    )
    assert response.status_code == 400
    assert "rotate-secret" in response.json()["error"]["message"]


def test_patch_validates_values(client: TestClient, admin_headers: Headers) -> None:
    """PATCH applies the same checks as create."""
    created(client, admin_headers)
    response = client.patch(
        "/admin/instances/generic/shop", headers=admin_headers, json={"target_url": "gopher://x"}
    )
    assert response.status_code == 400


def test_patch_of_an_unknown_instance_is_404(client: TestClient, admin_headers: Headers) -> None:
    """PATCH on a missing instance answers 404."""
    response = client.patch(
        "/admin/instances/generic/nope", headers=admin_headers, json={"enabled": False}
    )
    assert response.status_code == 404


def test_delete_removes_the_instance(client: TestClient, admin_headers: Headers) -> None:
    """DELETE answers 204, then the instance is gone and a second DELETE is 404."""
    created(client, admin_headers)
    assert client.delete("/admin/instances/generic/shop", headers=admin_headers).status_code == 204
    assert client.get("/admin/instances/generic/shop", headers=admin_headers).status_code == 404
    assert client.delete("/admin/instances/generic/shop", headers=admin_headers).status_code == 404


# -- rotating secrets -----------------------------------------------------------------------


def test_rotate_shows_the_new_secret_and_keeps_the_old_one_for_the_grace(
    client: TestClient, admin_headers: Headers
) -> None:
    """Rotation answers the new secret once; the old one is listed as previous until its end."""
    old = created(client, admin_headers)["secret"]
    response = client.post(
        "/admin/instances/generic/shop/rotate-secret",
        headers=admin_headers,
        json={"grace_seconds": 600},
    )
    assert response.status_code == 200
    new = response.json()
    assert new["secret"] != old and len(new["secret"]) >= 32
    assert new["previous_secret_valid_until"] == T0 + 600
    data = client.get("/admin/instances/generic/shop", headers=admin_headers).json()
    assert data["secret"] == mask(new["secret"])
    assert (data["previous_secret"], data["previous_secret_until"]) == (mask(old), T0 + 600)


def test_rotate_defaults_to_the_configured_grace(
    client: TestClient, admin_headers: Headers, settings: Settings
) -> None:
    """Without grace_seconds the old secret stays valid for rotation_grace_hours."""
    created(client, admin_headers)
    new = client.post("/admin/instances/generic/shop/rotate-secret", headers=admin_headers).json()
    assert new["previous_secret_valid_until"] == T0 + settings.rotation_grace_hours * 3600


def test_rotate_uses_a_given_secret(client: TestClient, admin_headers: Headers, box: Box) -> None:
    """A given secret becomes the current one."""
    created(client, admin_headers)
    client.post(
        "/admin/instances/generic/shop/rotate-secret",
        headers=admin_headers,
        json={"secret": "my-new-secret-value"},
    )
    row = box.db.read_one("SELECT secret FROM instances")
    assert row is not None and row[0] == "my-new-secret-value"


def test_rotate_with_no_grace_drops_the_old_secret(
    client: TestClient, admin_headers: Headers
) -> None:
    """grace_seconds 0 leaves no previous secret."""
    created(client, admin_headers)
    new = client.post(
        "/admin/instances/generic/shop/rotate-secret",
        headers=admin_headers,
        json={"grace_seconds": 0},
    ).json()
    assert new["previous_secret_valid_until"] is None and new["previous_secret"] is None


@pytest.mark.parametrize("grace", [-1, "10", True, None, [1]])
def test_rotate_with_a_bad_grace_is_400(
    client: TestClient, admin_headers: Headers, grace: object
) -> None:
    """grace_seconds must be a number >= 0."""
    created(client, admin_headers)
    response = client.post(
        "/admin/instances/generic/shop/rotate-secret",
        headers=admin_headers,
        json={"grace_seconds": grace},
    )
    assert response.status_code == 400


def test_rotate_of_an_unknown_instance_is_404(client: TestClient, admin_headers: Headers) -> None:
    """Rotating a missing instance answers 404."""
    response = client.post("/admin/instances/generic/nope/rotate-secret", headers=admin_headers)
    assert response.status_code == 404


# -- rejections -----------------------------------------------------------------------------


def test_rejections_show_recent_failed_requests(client: TestClient, admin_headers: Headers) -> None:
    """A request that fails verification is listed under the instance's rejections."""
    created(client, admin_headers)
    assert client.post("/ingress/generic/shop/events", content=b"{}").status_code == 401
    data = client.get("/admin/instances/generic/shop/rejections", headers=admin_headers).json()
    assert [(r["route"], r["status"]) for r in data["recent"]] == [("events", 401)]
    assert data["next_cursor"] is None


def test_rejections_of_an_unknown_instance_are_404(
    client: TestClient, admin_headers: Headers
) -> None:
    """Rejections of a missing instance answer 404."""
    response = client.get("/admin/instances/generic/nope/rejections", headers=admin_headers)
    assert response.status_code == 404


# -- deliveries -----------------------------------------------------------------------------


def test_deliveries_list_newest_first_with_the_contract_fields(
    client: TestClient, admin_headers: Headers, box: Box, make_deliveries: MakeDeliveries
) -> None:
    """Items carry the contract's fields, newest first."""
    first, second = make_deliveries(box.db, 2)
    items = client.get("/admin/deliveries", headers=admin_headers).json()["items"]
    assert [i["id"] for i in items] == [second, first]
    assert {
        "id",
        "plugin",
        "instance",
        "route",
        "provider_delivery_id",
        "conversation",
        "state",
        "attempts",
        "received_at",
    } <= set(items[0])
    assert (items[0]["state"], items[0]["received_at"]) == ("pending", T0)


def test_deliveries_filter_by_state(
    client: TestClient,
    admin_headers: Headers,
    box: Box,
    make_deliveries: MakeDeliveries,
    make_dead_letters: MakeDeadLetters,
) -> None:
    """?state= keeps only deliveries in that state."""
    make_dead_letters(box.db)
    pending = make_deliveries(box.db)
    items = client.get("/admin/deliveries?state=pending", headers=admin_headers).json()["items"]
    assert [i["id"] for i in items] == pending


def test_deliveries_filter_by_plugin_and_instance(
    client: TestClient, admin_headers: Headers, box: Box, make_deliveries: MakeDeliveries
) -> None:
    """?plugin= and ?instance= narrow the list."""
    make_deliveries(box.db, plugin="generic", instance="a")
    wanted = make_deliveries(box.db, plugin="generic", instance="b")
    make_deliveries(box.db, plugin="github", instance="b")
    items = client.get("/admin/deliveries?plugin=generic&instance=b", headers=admin_headers).json()[
        "items"
    ]
    assert [i["id"] for i in items] == wanted


def test_deliveries_paginate(
    client: TestClient, admin_headers: Headers, box: Box, make_deliveries: MakeDeliveries
) -> None:
    """The cursor walks every delivery exactly once."""
    made = make_deliveries(box.db, 5)
    seen: list[str] = []
    cursor = None
    for _ in range(10):  # three pages are enough: a cursor that loops must not hang the test
        page = client.get(
            "/admin/deliveries",
            params={"limit": 2, **({"cursor": cursor} if cursor else {})},
            headers=admin_headers,
        ).json()
        seen.extend(i["id"] for i in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    else:
        raise AssertionError(f"the cursor never ran out: {seen}")
    assert seen == made[::-1]


def test_deliveries_with_an_unknown_state_are_400(
    client: TestClient, admin_headers: Headers
) -> None:
    """state must be pending, delivered or dead."""
    response = client.get("/admin/deliveries?state=lost", headers=admin_headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


def test_delivery_detail_has_the_body(
    client: TestClient, admin_headers: Headers, box: Box, make_deliveries: MakeDeliveries
) -> None:
    """GET /admin/deliveries/{id} shows the delivery with its body."""
    (delivery_id,) = make_deliveries(box.db)
    data = client.get(f"/admin/deliveries/{delivery_id}", headers=admin_headers).json()
    assert data["id"] == delivery_id and data["body"] == '{"n": 1}'


def test_unknown_delivery_is_404(client: TestClient, admin_headers: Headers) -> None:
    """A delivery id that does not exist answers 404."""
    assert client.get("/admin/deliveries/msg_nope", headers=admin_headers).status_code == 404


# -- dead letters ---------------------------------------------------------------------------


def test_dlq_lists_dead_letters_with_the_contract_fields(
    client: TestClient, admin_headers: Headers, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """Items carry id, delivery, plugin, instance, attempts, last_error and created_at."""
    (dead,) = make_dead_letters(box.db)
    data = client.get("/admin/dlq", headers=admin_headers).json()
    (item,) = data["items"]
    assert item["id"] == dead and item["delivery"].startswith("msg_")
    assert (item["plugin"], item["instance"], item["attempts"], item["last_error"]) == (
        "generic",
        "main",
        1,
        "HTTP 500",
    )
    assert item["created_at"] == T0 + 1 and data["next_cursor"] is None


def test_dlq_filters_by_instance(
    client: TestClient, admin_headers: Headers, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """?instance= keeps that instance's dead letters."""
    make_dead_letters(box.db, instance="a")
    wanted = make_dead_letters(box.db, instance="b")
    items = client.get("/admin/dlq?instance=b", headers=admin_headers).json()["items"]
    assert [i["id"] for i in items] == wanted


def test_redrive_reports_counts_and_a_second_redrive_does_nothing(
    client: TestClient, admin_headers: Headers, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """Redrive answers {redriven, remaining}; once done, redriving again redrives 0."""
    make_dead_letters(box.db, 2)
    first = client.post("/admin/dlq/redrive", headers=admin_headers, json={})
    assert first.status_code == 200 and first.json() == {"redriven": 2, "remaining": 0}
    again = client.post("/admin/dlq/redrive", headers=admin_headers, json={}).json()
    assert again == {"redriven": 0, "remaining": 0}


def test_redrive_puts_the_delivery_back_to_pending(
    client: TestClient, admin_headers: Headers, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """A redriven delivery is pending again and leaves the DLQ list."""
    make_dead_letters(box.db)
    client.post("/admin/dlq/redrive", headers=admin_headers)
    assert client.get("/admin/dlq", headers=admin_headers).json()["items"] == []
    (item,) = client.get("/admin/deliveries", headers=admin_headers).json()["items"]
    assert item["state"] == "pending"


def test_redrive_is_bounded_by_limit(
    client: TestClient, admin_headers: Headers, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """limit bounds one redrive; remaining says what is left."""
    make_dead_letters(box.db, 3)
    data = client.post("/admin/dlq/redrive", headers=admin_headers, json={"limit": 2}).json()
    assert data == {"redriven": 2, "remaining": 1}


def test_redrive_by_ids_touches_only_those(
    client: TestClient, admin_headers: Headers, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """ids selects exactly those dead letters."""
    first, second = make_dead_letters(box.db, 2)
    data = client.post("/admin/dlq/redrive", headers=admin_headers, json={"ids": [second]}).json()
    assert data == {"redriven": 1, "remaining": 0}
    assert [i["id"] for i in client.get("/admin/dlq", headers=admin_headers).json()["items"]] == [
        first
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "5"},
        {"limit": True},
        {"ids": "dlq_1"},
        {"ids": [1]},
        {"plugin": 3},
        {"plugin": ""},
        {"everything": True},
    ],
)
def test_redrive_with_bad_input_is_400(
    client: TestClient, admin_headers: Headers, body: dict[str, Any]
) -> None:
    """Bad redrive selections answer 400 invalid_input."""
    response = client.post("/admin/dlq/redrive", headers=admin_headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


def test_discard_removes_a_dead_letter_once(
    client: TestClient, admin_headers: Headers, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """DELETE /admin/dlq/{id} answers 204, then 404 for the same id."""
    (dead,) = make_dead_letters(box.db)
    assert client.delete(f"/admin/dlq/{dead}", headers=admin_headers).status_code == 204
    assert client.get("/admin/dlq", headers=admin_headers).json()["items"] == []
    assert client.delete(f"/admin/dlq/{dead}", headers=admin_headers).status_code == 404
