"""The test event: POST /admin/instances/{plugin}/{instance}/test, the CLI and the dashboard's
button, through the real outbox to a real local target."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clirun import run
from conftest import box_of
from fake_target import FakeTarget, Reply
from live import SECRET, LiveBox, add_instance, running_box
from signers import sign_generic
from standardwebhooks.webhooks import Webhook
from starlette.testclient import TestClient
from waiting import eventually

from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, Settings, load_settings

pytestmark = pytest.mark.both_stores

TOKEN = "t" * 16
AUTH = {"authorization": f"Bearer {TOKEN}"}
OUTBOUND = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TEST = "/admin/instances/generic/main/test"


def box_settings(store: Path | DatabaseUrl, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "db_path": store,
        "admin_token": TOKEN,
        "retry_base_seconds": 30,
        "retry_max_seconds": 30,
        "delivery_timeout_seconds": 2,
    }
    return load_settings({}, **{**values, **changes})


@pytest.fixture
def live(store: Path | DatabaseUrl, target: FakeTarget) -> Iterator[LiveBox]:
    with running_box(box_settings(store)) as box:
        add_instance(box.box, target_url=target.url, outbound_secret=OUTBOUND)
        yield box


def test_a_test_event_is_delivered_marked_and_signed(live: LiveBox, target: FakeTarget) -> None:
    """200 with the first attempt's outcome; the target got a signed, marked test body."""
    answer = httpx.post(live.url + TEST, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["outcome"] == "delivered" and result["error"] is None
    assert result["status_code"] == 200  # what the target answered, as for any attempt
    assert result["delivery"].startswith("msg_") and result["duration_ms"] >= 0
    (got,) = target.received
    assert got.headers["ingress-box-test"] == "1"
    assert got.headers["webhook-id"] == result["delivery"]
    body = Webhook(OUTBOUND).verify(got.body, got.headers)
    assert body["ingress_box_test"] is True and body["sent_at"].endswith("Z")


def test_a_test_event_is_an_ordinary_delivery_without_a_conversation(live: LiveBox) -> None:
    """It is listed among the deliveries, on the reserved route, in no lane."""
    delivery = httpx.post(live.url + TEST, headers=AUTH, timeout=10).json()["delivery"]
    item = httpx.get(f"{live.url}/admin/deliveries/{delivery}", headers=AUTH).json()
    assert (item["route"], item["conversation"], item["state"]) == ("@test", None, "delivered")
    listed = httpx.get(f"{live.url}/admin/deliveries?instance=main", headers=AUTH).json()
    assert [d["id"] for d in listed["items"]] == [delivery]


def test_a_failing_target_answers_retry_with_its_status(live: LiveBox, target: FakeTarget) -> None:
    """Against a 500 the outcome is retry, with the status and the error."""
    target.reply(Reply(500, body=b"down"), then=500)
    result = httpx.post(live.url + TEST, headers=AUTH, timeout=10).json()
    assert result["outcome"] == "retry"
    assert (result["status_code"], result["error"]) == (500, "HTTP 500: down")


def test_a_test_event_with_one_attempt_allowed_is_dead(
    store: Path | DatabaseUrl, target: FakeTarget
) -> None:
    """With the retry budget of one attempt, a 500 makes it dead at once."""
    target.reply(then=500)
    with running_box(box_settings(store, retry_max_attempts=1)) as live:
        add_instance(live.box, target_url=target.url)
        result = httpx.post(live.url + TEST, headers=AUTH, timeout=10).json()
    assert (result["outcome"], result["status_code"]) == ("dead", 500)


def test_without_a_worker_the_answer_is_202_with_the_delivery(store: Path | DatabaseUrl) -> None:
    """No attempt ends within the delivery timeout + 2 s: 202, the delivery still pending."""
    settings = box_settings(store, delivery_timeout_seconds=0.2)
    with TestClient(create_app(settings, run_worker=False)) as client:
        add_instance(box_of(client), target_url="http://127.0.0.1:9/hook")
        answer = client.post(TEST, headers=AUTH)
        assert answer.status_code == 202, answer.text
        assert answer.json()["outcome"] is None
        item = client.get(f"/admin/deliveries/{answer.json()['delivery']}", headers=AUTH).json()
        assert item["state"] == "pending"


def test_a_test_event_passes_a_strict_lane_held_by_a_dead_head(
    store: Path | DatabaseUrl, target: FakeTarget
) -> None:
    """A conversation's dead head holds its strict lane; the test event, in no lane, goes."""
    target.reply(then=500)
    with running_box(box_settings(store, retry_max_attempts=1)) as live:
        add_instance(live.box, target_url=target.url, lane_policy="strict")
        body = b'{"text": "hi"}'
        headers = {
            "content-type": "application/json",
            "x-conversation": "chat-1",
            **sign_generic(SECRET, body, msg_id="e1"),
        }
        httpx.post(live.url + "/ingress/generic/main/events", content=body, headers=headers)

        def parked() -> bool:
            dead = httpx.get(f"{live.url}/admin/deliveries?state=dead", headers=AUTH).json()
            return [d.get("parked") for d in dead["items"]] == [True]

        eventually(parked, 15, "the conversation's head parked")
        target.reply(then=200)
        result = httpx.post(live.url + TEST, headers=AUTH, timeout=10).json()
    assert result["outcome"] == "delivered"


def test_an_instance_without_a_target_cannot_be_tested(live: LiveBox) -> None:
    """409 no_target, and nothing is stored."""
    add_instance(live.box, instance="nowhere", target_url=None)
    answer = httpx.post(live.url + "/admin/instances/generic/nowhere/test", headers=AUTH)
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "no_target"
    assert httpx.get(f"{live.url}/admin/deliveries", headers=AUTH).json()["items"] == []


def test_an_unknown_instance_is_404(live: LiveBox) -> None:
    """No instance, no test event."""
    answer = httpx.post(live.url + "/admin/instances/generic/nope/test", headers=AUTH)
    assert answer.status_code == 404


def test_a_provider_cannot_make_the_box_send_the_test_mark(
    live: LiveBox, target: FakeTarget
) -> None:
    """A provider request carrying ingress-box-test: 1 is forwarded without it."""
    body = b'{"hello": "world"}'
    headers = {
        "content-type": "application/json",
        "ingress-box-test": "1",
        **sign_generic(SECRET, body, msg_id="e1"),
    }
    sent = httpx.post(live.url + "/ingress/generic/main/events", content=body, headers=headers)
    assert sent.status_code == 202
    (got,) = target.wait_for(1)
    assert "ingress-box-test" not in got.headers


def test_config_headers_cannot_set_the_test_mark(live: LiveBox, target: FakeTarget) -> None:
    """Not even the instance's own extra headers put the mark on a real delivery."""
    answer = httpx.patch(
        f"{live.url}/admin/instances/generic/main",
        headers=AUTH,
        json={"config": {"headers": {"Ingress-Box-Test": "1"}}},
    )
    assert answer.status_code == 200, answer.text
    body = b"{}"
    headers = {"content-type": "application/json", **sign_generic(SECRET, body, msg_id="e1")}
    httpx.post(live.url + "/ingress/generic/main/events", content=body, headers=headers)
    (got,) = target.wait_for(1)
    assert "ingress-box-test" not in got.headers


# -- the CLI -------------------------------------------------------------------------------------


def test_the_cli_sends_a_test_event_and_prints_its_outcome(
    live: LiveBox, target: FakeTarget
) -> None:
    """`instances test` writes the event into the file, wakes the box's worker and waits."""
    db = str(live.box.settings.db_path)
    result = run("instances", "test", "generic", "main", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["outcome"] == "delivered"
    (got,) = target.received
    assert got.headers["webhook-id"] == found["delivery"]
    assert got.headers["ingress-box-test"] == "1"


def test_the_cli_exits_1_when_the_test_event_was_not_delivered(
    live: LiveBox, target: FakeTarget
) -> None:
    """A 500 is printed with its error, and the exit status says it failed."""
    target.reply(then=500)
    db = str(live.box.settings.db_path)
    result = run("instances", "test", "generic", "main", "--db", db)
    assert result.exit_code == 1
    assert ": retry (HTTP 500) in " in result.output
    assert "error: HTTP 500" in result.output


# -- the dashboard -------------------------------------------------------------------------------


def test_the_dashboard_button_sends_a_test_event_and_shows_the_outcome(
    store: Path | DatabaseUrl, target: FakeTarget
) -> None:
    """The instance page's button (a POST with the CSRF token) reports the first attempt."""
    target.reply(Reply(503, body=b"maintenance"), then=503)
    with TestClient(create_app(box_settings(store))) as ui:
        add_instance(box_of(ui), target_url=target.url)
        assert ui.post("/admin/ui/login", data={"token": TOKEN}).status_code == 200
        page = ui.get("/admin/ui/instances/generic/main")
        assert "Send test event" in page.text
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match is not None
        shown = ui.post("/admin/ui/instances/generic/main/test", data={"csrf": match.group(1)})
    assert shown.status_code == 200 and str(shown.url).endswith("/admin/ui/instances/generic/main")
    assert re.search(
        r"Test event msg_\w+: retry \(HTTP 503\) in \d+ ms: HTTP 503: maintenance", shown.text
    )
    assert target.received[0].headers["ingress-box-test"] == "1"


def test_the_dashboard_button_needs_the_csrf_token(
    store: Path | DatabaseUrl, target: FakeTarget
) -> None:
    """Without the token: 403 and nothing sent."""
    with TestClient(create_app(box_settings(store))) as ui:
        add_instance(box_of(ui), target_url=target.url)
        ui.post("/admin/ui/login", data={"token": TOKEN})
        answer = ui.post("/admin/ui/instances/generic/main/test", data={})
        listed = ui.get("/admin/deliveries", headers=AUTH).json()["items"]
    assert answer.status_code == 403 and listed == []
