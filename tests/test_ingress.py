"""The provider-facing endpoint, row by row of CONTRACT's pipeline table."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Reply, box_of
from live import SECRET, add_instance, running_box
from postgres import outside
from signers import sign_generic
from starlette.testclient import TestClient

from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, Settings, load_settings

pytestmark = pytest.mark.both_stores

URL = "/ingress/generic/main/events"


@pytest.fixture
def settings(store: Path | DatabaseUrl) -> Settings:
    return load_settings({}, db_path=store, admin_token="test-admin-token")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, run_worker=False)) as c:
        add_instance(box_of(c))
        yield c


def count(client: TestClient, table: str = "deliveries") -> int:
    row = box_of(client).db.read_one(f"SELECT count(*) FROM {table}")
    assert row is not None
    return int(row[0])


def signed(body: bytes, secret: str = SECRET, **extra: str) -> dict[str, str]:
    return {"content-type": "application/json", **sign_generic(secret, body), **extra}


def post(
    client: TestClient, body: bytes, url: str = URL, secret: str = SECRET, **extra: str
) -> Reply:
    reply: Reply = client.post(url, content=body, headers=signed(body, secret, **extra))
    return reply


# -- 404 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/ingress/nope/main/events",  # unknown plugin
        "/ingress/generic/other/events",  # unknown instance
        "/ingress/generic/main/nope",  # unknown route
        "/ingress/generic/bad%20id/events",  # an id the contract does not allow
        "/ingress/generic/" + "a" * 65 + "/events",
    ],
)
def test_unknown_plugin_instance_or_route_is_404_and_stores_nothing(
    client: TestClient, url: str
) -> None:
    """Anything not configured answers 404 before reading the body."""
    response = post(client, b"{}", url=url)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert count(client) == 0


def test_disabled_instance_is_404(client: TestClient) -> None:
    """A disabled instance is as good as absent, and the cache never serves it stale."""
    assert post(client, b"{}").status_code == 202
    box = box_of(client)
    box.db.write(lambda c: c.execute("UPDATE instances SET enabled = 0"))
    assert post(client, b'{"n":2}').status_code == 404


def test_rotated_secret_takes_effect_on_the_next_request(client: TestClient) -> None:
    """The instance cache notices a change made by any connection at once."""
    with outside(box_of(client).db) as conn:
        conn.execute("UPDATE instances SET secret = 'brand-new-secret-value'")
    assert post(client, b"{}").status_code == 401
    assert post(client, b"{}", secret="brand-new-secret-value").status_code == 202


# -- 413 -------------------------------------------------------------------------------------


def test_declared_body_over_the_cap_is_413(tmp_path: Path) -> None:
    """A Content-Length over the cap is refused without reading the body."""
    s = load_settings({}, db_path=tmp_path / "b.db", admin_token="t" * 16, max_body_bytes=10)
    with TestClient(create_app(s, run_worker=False)) as c:
        add_instance(box_of(c))
        body = b"x" * 11
        response = post(c, body)
        assert response.status_code == 413
        assert count(c) == 0
        assert post(c, b"x" * 10).status_code == 202


def test_streamed_body_over_the_cap_is_413(tmp_path: Path) -> None:
    """A chunked body with no Content-Length is cut off as soon as it passes the cap."""
    s = load_settings({}, db_path=tmp_path / "b.db", admin_token="t" * 16, max_body_bytes=1000)
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            sent.append(1)
            yield b"y" * 100

    with TestClient(create_app(s, run_worker=False)) as c:
        add_instance(box_of(c))
        response = c.post(URL, content=chunks(), headers={"x-signature": "sha256=00"})
        assert response.status_code == 413
        assert count(c) == 0


def test_cap_zero_lets_only_the_empty_body_through(tmp_path: Path) -> None:
    """max_body_bytes=0 means the empty body passes and one byte does not."""
    s = load_settings({}, db_path=tmp_path / "b.db", admin_token="t" * 16, max_body_bytes=0)
    with TestClient(create_app(s, run_worker=False)) as c:
        add_instance(box_of(c))
        assert post(c, b"").status_code == 202
        assert post(c, b"x").status_code == 413


# -- 401 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({}, "missing_signature"),
        ({"x-signature": "sha256=" + "0" * 64}, "bad_signature"),
        ({"x-signature": "sha256=abc"}, "bad_signature"),
        ({"x-signature": "garbage"}, "bad_signature"),
    ],
)
def test_bad_signature_is_401_with_a_reason_and_stores_nothing(
    client: TestClient, headers: dict[str, str], reason: str
) -> None:
    """Verification failures answer 401 with a machine-readable reason."""
    response = client.post(URL, content=b'{"a":1}', headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == reason
    assert count(client) == 0


def test_tampered_body_is_401(client: TestClient) -> None:
    """A signature over other bytes fails."""
    headers = signed(b'{"amount":1}')
    assert client.post(URL, content=b'{"amount":100}', headers=headers).status_code == 401


def test_empty_secret_fails_closed(client: TestClient) -> None:
    """An instance with an empty secret verifies nothing, not everything."""
    box_of(client).db.write(lambda c: c.execute("UPDATE instances SET secret = ''"))
    assert post(client, b"{}", secret="").status_code == 401


# -- 429 -------------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    """Over the per-instance rate the box answers 429 and says when to come back."""
    s = load_settings({}, db_path=tmp_path / "b.db", admin_token="t" * 16, rate_limit=2)
    with TestClient(create_app(s, run_worker=False)) as c:
        add_instance(box_of(c))
        statuses = [post(c, f'{{"n":{i}}}'.encode()).status_code for i in range(3)]
        assert statuses == [202, 202, 429]
        limited = post(c, b'{"n":9}')
        assert int(limited.headers["retry-after"]) >= 1


def test_rate_limit_charges_only_verified_requests(tmp_path: Path) -> None:
    """Unsigned floods do not spend the instance's budget."""
    s = load_settings({}, db_path=tmp_path / "b.db", admin_token="t" * 16, rate_limit=1)
    with TestClient(create_app(s, run_worker=False)) as c:
        add_instance(box_of(c))
        for _ in range(5):
            assert c.post(URL, content=b"{}").status_code == 401
        assert post(c, b"{}").status_code == 202


# -- 503 -------------------------------------------------------------------------------------


def test_storage_that_cannot_commit_is_503_never_202(tmp_path: Path) -> None:
    """With the write lock held elsewhere past the timeout, the box answers 503 + Retry-After."""
    s = load_settings({}, db_path=tmp_path / "b.db", admin_token="t" * 16, busy_timeout_seconds=0.2)
    with TestClient(create_app(s, run_worker=False)) as c:
        add_instance(box_of(c))
        blocker = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            response = post(c, b'{"n":1}')
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert count(c) == 0
        assert post(c, b'{"n":1}').status_code == 202


# -- 202 and duplicates ----------------------------------------------------------------------


def test_new_delivery_is_committed_with_its_outbox_row_then_acked(client: TestClient) -> None:
    """A verified new webhook answers 202 and both rows exist."""
    response = post(client, b'{"hello":"world"}', **{"x-delivery": "d-1"})
    assert response.status_code == 202
    assert response.json()["id"].startswith("msg_")
    assert count(client) == 1
    assert count(client, "outbox") == 1


def test_duplicate_gets_the_same_ack_byte_for_byte(client: TestClient) -> None:
    """A provider retry stores nothing new and answers exactly what the first one got."""
    first = post(client, b'{"a":1}', **{"x-delivery": "d-1"})
    second = post(client, b'{"a":1}', **{"x-delivery": "d-1"})
    assert (second.status_code, second.content) == (first.status_code, first.content)
    assert second.headers["content-type"] == first.headers["content-type"]
    assert count(client) == 1


def test_same_body_without_a_dedup_header_dedups(client: TestClient) -> None:
    """With no dedup header the body hash is the id, so a resend is a duplicate."""
    post(client, b'{"same":true}')
    post(client, b'{"same":true}')
    assert count(client) == 1


def test_different_body_without_header_is_a_new_delivery(client: TestClient) -> None:
    """Another body hashes to another id."""
    post(client, b'{"n":1}')
    post(client, b'{"n":2}')
    assert count(client) == 2


def test_blank_dedup_header_counts_as_absent(client: TestClient) -> None:
    """A whitespace-only dedup header falls back to the body hash."""
    post(client, b'{"n":1}', **{"x-delivery": "   "})
    post(client, b'{"n":1}')
    row = box_of(client).db.read_one("SELECT provider_delivery_id FROM deliveries")
    assert count(client) == 1
    assert row is not None
    expected = hashlib.sha256(b"generic\x00main\x00events\x00" + b'{"n":1}').hexdigest()
    assert row[0] == expected


def test_dedup_header_is_trimmed(client: TestClient) -> None:
    """' d-1 ' and 'd-1' are the same delivery."""
    post(client, b'{"n":1}', **{"x-delivery": " d-1 "})
    post(client, b'{"n":2}', **{"x-delivery": "d-1"})
    assert count(client) == 1


def test_same_provider_id_under_another_instance_is_new(client: TestClient) -> None:
    """The dedup key is scoped by plugin and instance."""
    add_instance(box_of(client), instance="second")
    post(client, b"{}", **{"x-delivery": "d-1"})
    post(client, b"{}", url="/ingress/generic/second/events", **{"x-delivery": "d-1"})
    assert count(client) == 2


def test_raw_bytes_are_stored_unchanged_and_credentials_redacted(client: TestClient) -> None:
    """Non-UTF-8 bytes are kept as sent; signature and auth headers are not stored."""
    body = b'\xff\xfe{ "weird" : [1,2] }\x00'
    post(client, body, authorization="Bearer hunter2", **{"x-conversation": "c-1"})
    row = box_of(client).db.read_one("SELECT body, headers, conversation FROM deliveries")
    assert row is not None
    assert bytes(row["body"]) == body
    headers = json.loads(row["headers"])
    assert headers["authorization"] == "[redacted]"
    assert headers["x-signature"] == "[redacted]"
    assert "hunter2" not in row["headers"]
    assert row["conversation"] == "c-1"


def test_any_content_type_is_accepted(client: TestClient) -> None:
    """Form-encoded and binary bodies go through like JSON."""
    for body, ctype in (
        (b"a=1&b=2", "application/x-www-form-urlencoded"),
        (b"\x00\x01", "application/octet-stream"),
        (b"plain", "text/plain"),
    ):
        headers = signed(body)
        headers["content-type"] = ctype
        assert client.post(URL, content=body, headers=headers).status_code == 202
    assert count(client) == 3


def test_a_path_after_the_route_is_accepted_and_kept(client: TestClient) -> None:
    """ANY /ingress/{plugin}/{instance}/{route}/{anything} reaches the route."""
    response = post(client, b"{}", url=URL + "/extra/path?x=1")
    assert response.status_code == 202
    row = box_of(client).db.read_one("SELECT subpath FROM deliveries")
    assert row is not None and row[0] == "extra/path?x=1"


def test_deliveries_survive_a_restart(settings: Settings) -> None:
    """What was acked is still there after the app stops and starts again, and still dedups."""
    with TestClient(create_app(settings, run_worker=False)) as c:
        add_instance(box_of(c))
        first = post(c, b'{"keep":1}')
    with TestClient(create_app(settings, run_worker=False)) as c:
        again = post(c, b'{"keep":1}')
        assert again.content == first.content
        assert count(c) == 1


def test_forty_concurrent_identical_posts_store_one_row(settings: Settings) -> None:
    """A duplicate storm against the real server stores exactly one delivery."""
    with running_box(settings, run_worker=False) as live:
        add_instance(live.box)
        body = b'{"storm":true}'
        headers = signed(body, **{"x-delivery": "storm-1"})

        def send(_: int) -> httpx.Response:
            return httpx.post(live.url + URL, content=body, headers=headers, timeout=10)

        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            responses = list(pool.map(send, range(40)))
        assert {r.status_code for r in responses} == {202}
        assert len({r.content for r in responses}) == 1
        row = live.box.db.read_one("SELECT count(*) FROM deliveries")
        assert row is not None and row[0] == 1


def test_every_202_is_a_committed_row_under_concurrency(settings: Settings) -> None:
    """200 distinct concurrent posts: as many rows as 202s, with commits shared."""
    with running_box(settings, run_worker=False) as live:
        add_instance(live.box)
        batches: list[int] = []
        live.box.db.on_commit.append(batches.append)

        def send(i: int) -> int:
            body = f'{{"n":{i}}}'.encode()
            return httpx.post(
                live.url + URL, content=body, headers=signed(body), timeout=10
            ).status_code

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
            statuses = list(pool.map(send, range(200)))
        assert time.monotonic() - started < 60
        row = live.box.db.read_one("SELECT count(*) FROM deliveries")
        assert row is not None and row[0] == statuses.count(202) == 200


def test_credentials_in_the_query_string_are_not_stored(client: TestClient) -> None:
    """A token passed in the URL is redacted in the stored path, other parameters kept."""
    post(client, b"{}", url=URL + "/x?token=hunter2&page=2&api_key=k1")
    row = box_of(client).db.read_one("SELECT subpath FROM deliveries")
    assert row is not None
    assert row[0] == "x?token=[redacted]&page=2&api_key=[redacted]"


def test_a_custom_verify_header_is_redacted_whatever_its_name(tmp_path: Path) -> None:
    """A plugin whose secret header has an innocent name still never has it stored."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "gitlab.toml").write_text(
        'id = "gitlab"\nname = "GitLab"\n[routes.events]\n'
        '[routes.events.verify]\nscheme = "shared-secret"\nheader = "X-Gitlab-Word"\n'
    )
    s = load_settings({}, db_path=tmp_path / "b.db", admin_token="t" * 16, plugins_dir=plugins)
    with TestClient(create_app(s, run_worker=False)) as c:
        add_instance(box_of(c), plugin="gitlab", secret="the-shared-word-123")
        response = c.post(
            "/ingress/gitlab/main/events",
            content=b"{}",
            headers={"x-gitlab-word": "the-shared-word-123"},
        )
        assert response.status_code == 202
        row = box_of(c).db.read_one("SELECT headers FROM deliveries")
        assert row is not None and "the-shared-word-123" not in row[0]
