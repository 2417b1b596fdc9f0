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
from conftest import ADMIN_TOKEN, Reply
from starlette.testclient import TestClient

from ingress_box import extract, logs
from ingress_box.web.box import Box

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
