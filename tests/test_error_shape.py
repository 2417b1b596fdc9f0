"""One JSON error shape across the admin API, and never a 500 for bad input.

After datasette's tests/test_error_shape.py: every error answer is exactly
``{"error": {"code": str, "message": str}}``, whatever endpoint and whatever went wrong.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, MakeDeadLetters, Reply
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from ingress_box.app import create_app
from ingress_box.config import load_settings
from ingress_box.web.box import Box

Headers = dict[str, str]

ENDPOINTS = [
    ("GET", "/admin/openapi.json"),
    ("GET", "/admin/plugins"),
    ("GET", "/admin/instances"),
    ("POST", "/admin/instances"),
    ("GET", "/admin/instances/generic/shop"),
    ("PATCH", "/admin/instances/generic/shop"),
    ("DELETE", "/admin/instances/generic/shop"),
    ("POST", "/admin/instances/generic/shop/rotate-secret"),
    ("GET", "/admin/instances/generic/shop/rejections"),
    ("GET", "/admin/instances/generic/shop/rejections/1"),
    ("GET", "/admin/unmatched"),
    ("GET", "/admin/deliveries"),
    ("GET", "/admin/deliveries/msg_x"),
    ("GET", "/admin/dlq"),
    ("POST", "/admin/dlq/redrive"),
    ("DELETE", "/admin/dlq/dlq_x"),
    ("GET", "/admin/bridges"),
    ("POST", "/admin/bridges"),
    ("GET", "/admin/bridges/shop"),
    ("DELETE", "/admin/bridges/shop"),
]
JSON_ENDPOINTS = [(m, p) for m, p in ENDPOINTS if m in ("POST", "PATCH")]
LIST_ENDPOINTS = [
    "/admin/instances",
    "/admin/deliveries",
    "/admin/dlq",
    "/admin/instances/generic/shop/rejections",
    "/admin/unmatched",
]


def assert_error(response: Reply, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"]
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] == code


def assert_no_500(response: Reply) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_error(response, response.status_code)


@pytest.fixture
def shop(client: TestClient, admin_headers: Headers) -> None:
    """An instance generic/shop, so item endpoints reach their body checks."""
    response = client.post(
        "/admin/instances", headers=admin_headers, json={"plugin": "generic", "instance": "shop"}
    )
    assert response.status_code == 201


def cursor_of(key: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_requires_the_token(client: TestClient, method: str, path: str) -> None:
    """Without a token every endpoint answers 401 unauthorized in the error shape."""
    assert_error(client.request(method, path), 401, "unauthorized")


@pytest.mark.parametrize("path", ["/admin/", "/admin/nope", "/admin/instances/a/b/c/d"])
def test_unknown_path_is_404_in_the_error_shape(
    client: TestClient, admin_headers: Headers, path: str
) -> None:
    """An unknown admin path answers 404 not_found in the error shape."""
    assert_error(client.get(path, headers=admin_headers), 404, "not_found")


def test_wrong_method_is_405_with_allow(client: TestClient, admin_headers: Headers) -> None:
    """A method the path does not take answers 405 with Allow, in the error shape."""
    response = client.put("/admin/instances", headers=admin_headers)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD, POST"


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
@pytest.mark.parametrize(
    "body", [b"{", b"not json", b"\xff\xfe\x00", b'{"a": NaN}', b'{"a": 1e999}', b"[" * 100_000]
)
def test_a_body_that_is_not_json_is_400_invalid_json(
    client: TestClient, admin_headers: Headers, shop: None, method: str, path: str, body: bytes
) -> None:
    """A body that is not (finite) JSON answers 400 invalid_json."""
    response = client.request(method, path, content=body, headers=admin_headers)
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
@pytest.mark.parametrize("body", [b"[]", b"1", b'"x"', b"null"])
def test_json_that_is_not_an_object_is_400_invalid_input(
    client: TestClient, admin_headers: Headers, shop: None, method: str, path: str, body: bytes
) -> None:
    """A JSON body that is not an object answers 400 invalid_input."""
    response = client.request(method, path, content=body, headers=admin_headers)
    assert_error(response, 400, "invalid_input")


def test_an_oversized_body_is_413(client: TestClient, admin_headers: Headers) -> None:
    """A body over the admin cap answers 413 body_too_large without being parsed."""
    response = client.post(
        "/admin/instances", headers=admin_headers, content=b" " * (1 << 20) + b"{}"
    )
    assert_error(response, 413, "body_too_large")


def test_storage_unavailable_is_503_with_retry_after(
    client: TestClient, admin_headers: Headers, box: Box
) -> None:
    """A write the database cannot take answers 503 storage_unavailable with Retry-After."""
    box.db.close()  # the writer is gone: every write fails as unavailable
    response = client.post(
        "/admin/instances", headers=admin_headers, json={"plugin": "generic", "instance": "shop"}
    )
    assert_error(response, 503, "storage_unavailable")
    assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("path", LIST_ENDPOINTS)
@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1e3"},
        {"limit": "9" * 5000},
        {"cursor": "!!!"},
        {"cursor": "e30"},
        {"cursor": cursor_of([])},
        {"cursor": cursor_of(["a", "b", "c"])},
        {"cursor": cursor_of([None, None])},
        {"state": "lost"},
        {"plugin": "\x00"},
        {"instance": "💥" * 100},
    ],
)
def test_garbage_queries_never_cause_a_500(
    client: TestClient, admin_headers: Headers, path: str, query: dict[str, str]
) -> None:
    """Any query string on a list endpoint answers below 500, errors in the error shape."""
    assert_no_500(client.get(path, params=query, headers=admin_headers))


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/admin/deliveries", ["x"]),
        ("/admin/deliveries", [1e300]),
        ("/admin/deliveries", [2**70]),
        ("/admin/dlq", ["x"]),
        ("/admin/dlq", [1e300]),
        ("/admin/dlq", [2**70]),
        ("/admin/instances", ["a", 1.5]),
        ("/admin/instances", [1, 2]),
        ("/admin/instances", ["a", 2**70]),
    ],
)
def test_forged_cursors_never_cause_a_500(
    client: TestClient, admin_headers: Headers, path: str, key: list[object]
) -> None:
    """A well-formed cursor holding keys this server never gave answers below 500."""
    assert_no_500(client.get(path, params={"cursor": cursor_of(key)}, headers=admin_headers))


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("segment", ["%00", "..", "%ff", "x" * 5000, "%F0%9F%92%A5"])
def test_garbage_path_segments_never_cause_a_500(
    client: TestClient, admin_headers: Headers, method: str, path: str, segment: str
) -> None:
    """Odd ids in paths answer below 500, errors in the error shape."""
    odd = path.replace("shop", segment).replace("msg_x", segment).replace("dlq_x", segment)
    assert_no_500(client.request(method, odd, headers=admin_headers, json={}))


@pytest.fixture(scope="module")
def module_client() -> Iterator[TestClient]:
    # Hypothesis runs many examples per test: one app for all of them, with data to act on.
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings({}, db_path=Path(folder) / "box.db", admin_token=ADMIN_TOKEN)
        with TestClient(create_app(settings, run_worker=False)) as client:
            yield client


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "plugin",
    "instance",
    "target_url",
    "secret",
    "verify_token",
    "session",
    "config",
    "lane_policy",
    "handler",
    "enabled",
    "grace_seconds",
    "ids",
    "limit",
    "id",
    "gateway",
    "chatwoot",
    "options",
]
BODIES = JSON_VALUES | st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6)


@hypothesis_settings(max_examples=150, deadline=None)
@given(endpoint=st.sampled_from(JSON_ENDPOINTS), body=BODIES)
def test_any_json_body_at_any_endpoint_never_causes_a_500(
    module_client: TestClient, endpoint: tuple[str, str], body: Any
) -> None:
    """Arbitrary JSON at every JSON endpoint answers below 500, errors in the error shape."""
    method, path = endpoint
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    module_client.post(
        "/admin/instances", headers=headers, json={"plugin": "generic", "instance": "shop"}
    )  # 201 or 409: both fine
    assert_no_500(module_client.request(method, path, json=body, headers=headers))


def test_errors_from_the_store_keep_the_shape(
    client: TestClient, admin_headers: Headers, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """A store-level NotFound (discarding a redriven dead letter) answers 404 in the shape."""
    (dead,) = make_dead_letters(box.db)
    client.post("/admin/dlq/redrive", headers=admin_headers)
    assert_error(client.delete(f"/admin/dlq/{dead}", headers=admin_headers), 404, "not_found")
