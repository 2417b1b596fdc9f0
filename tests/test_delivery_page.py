"""The dashboard's delivery page: the Replay button, the attempt log, and copy as curl (run
through bash and curl against a real target, which verifies the signature)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Clock
from fake_target import FakeTarget, Received
from live import SECRET as INBOUND_SECRET
from live import LiveBox, add_instance, running_box
from signers import sign_generic
from standardwebhooks.webhooks import Webhook
from starlette.testclient import TestClient
from test_dashboard import add_delivery, csrf_of, log_in
from waiting import eventually

from ingress_box.config import DatabaseUrl, Settings, load_settings
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

UI = "/admin/ui"
TOKEN = "delivery-page-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
OUTBOUND_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CURL = re.compile(r'<pre class="body" id="curl">(.*?)</pre>', re.DOTALL)
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def settings(store: Path | DatabaseUrl) -> Settings:
    return load_settings({}, db_path=store, admin_token=TOKEN)


@pytest.fixture
def ui(client: TestClient) -> TestClient:
    assert log_in(client, TOKEN).status_code == 303
    return client


def curl_of(page: str) -> str:
    found = CURL.search(page)
    assert found is not None, "the page has no curl command"
    return html.unescape(found.group(1))


def run_curl(command: str) -> None:
    """Run the page's command line as an operator would paste it into bash."""
    done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode()


def verified(received: Received) -> object:
    """What the Standard Webhooks library makes of the request: it raises on a bad signature."""
    return Webhook(OUTBOUND_SECRET).verify(received.body, received.headers)


def signature_holds(received: Received) -> bool:
    """The Standard Webhooks formula by hand, for a body the library cannot take (not UTF-8)."""
    key = base64.b64decode(OUTBOUND_SECRET.removeprefix("whsec_"))
    h = received.headers
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return h["webhook-signature"] == f"v1,{expected}"


# -- the Replay button ---------------------------------------------------------------------------


def test_replay_button_puts_a_delivered_delivery_back_in_the_outbox(
    ui: TestClient, box: Box
) -> None:
    """The delivery page of a delivered delivery has a Replay form; posting it (with the CSRF
    token) makes the delivery pending again and says so."""
    delivery_id = add_delivery(box.db, 1)
    box.db.write(lambda conn: conn.execute("DELETE FROM outbox"))
    box.db.write(lambda conn: conn.execute("UPDATE deliveries SET state = 'delivered'"))
    page = ui.get(f"{UI}/deliveries/{delivery_id}").text
    assert f'action="{UI}/deliveries/{delivery_id}/replay"' in page
    csrf = csrf_of(ui, f"{UI}/deliveries/{delivery_id}")
    answer = ui.post(f"{UI}/deliveries/{delivery_id}/replay", data={"csrf": csrf})
    assert answer.status_code == 200 and f"Replaying {delivery_id}" in answer.text
    row = box.db.read_one("SELECT state FROM deliveries")
    assert row is not None and row[0] == "pending"
    assert box.db.read_one("SELECT 1 FROM outbox") is not None


def test_replay_button_without_the_csrf_token_changes_nothing(ui: TestClient, box: Box) -> None:
    """A forged replay form is 403 and the delivery stays as it was."""
    delivery_id = add_delivery(box.db, 1)
    box.db.write(lambda conn: conn.execute("DELETE FROM outbox"))
    box.db.write(lambda conn: conn.execute("UPDATE deliveries SET state = 'delivered'"))
    answer = ui.post(f"{UI}/deliveries/{delivery_id}/replay", data={"csrf": "forged"})
    assert answer.status_code == 403
    row = box.db.read_one("SELECT state FROM deliveries")
    assert row is not None and row[0] == "delivered"


def test_a_pending_delivery_offers_no_replay_and_a_forced_one_says_why(
    ui: TestClient, box: Box
) -> None:
    """A pending delivery's page has no Replay form; posting one anyway flashes the reason."""
    delivery_id = add_delivery(box.db, 1)
    page = ui.get(f"{UI}/deliveries/{delivery_id}").text
    assert "/replay" not in page
    csrf = csrf_of(ui, f"{UI}/deliveries/{delivery_id}")
    answer = ui.post(f"{UI}/deliveries/{delivery_id}/replay", data={"csrf": csrf})
    assert "still pending" in answer.text


def test_attempt_log_shows_status_error_and_answer_labelled_for_phones(
    ui: TestClient, box: Box, clock: Clock
) -> None:
    """Each attempt row has its status, error and answer, each cell labelled (the labels are
    what a phone shows when the table becomes one card per attempt)."""
    delivery_id = add_delivery(box.db, 1)
    box.db.write(
        lambda conn: conn.execute(
            "INSERT INTO attempts (delivery_seq, attempt, started_at, duration_ms, outcome, "
            "status_code, error, response) VALUES "
            "(1, 1, ?, 5, 'retry', 503, 'HTTP 503: busy', 'busy <b>now</b>')",
            (clock(),),
        )
    )
    page = ui.get(f"{UI}/deliveries/{delivery_id}").text
    assert 'class="attempts stack"' in page
    assert '<td data-label="status">503</td>' in page
    assert '<td data-label="error" class="wrap">HTTP 503: busy</td>' in page
    assert "busy &lt;b&gt;now&lt;/b&gt;" in page


# -- copy as curl --------------------------------------------------------------------------------


@pytest.fixture
def live(settings: Settings, target: FakeTarget) -> Iterator[LiveBox]:
    with running_box(settings) as box:
        add_instance(box.box, target_url=target.url, outbound_secret=OUTBOUND_SECRET)
        yield box


@needs_curl
def test_copy_as_curl_sends_what_forward_sent_and_the_target_verifies_it(
    live: LiveBox, target: FakeTarget
) -> None:
    """The curl command of a delivered event, run in bash, reaches the target with the body
    and the headers forward sent (but a fresh timestamp), signed with the outbound secret."""
    body = json.dumps({"text": 'it\'s "quoted" $HOME `id` ü %s'}, indent=1).encode()
    headers = {"content-type": "application/json", **sign_generic(INBOUND_SECRET, body)}
    headers["x-conversation"] = "chat-1"
    assert httpx.post(live.url + "/ingress/generic/main/events", content=body, headers=headers)
    (forwarded,) = target.wait_for(1)
    with httpx.Client(base_url=live.url) as client:
        assert client.post(f"{UI}/login", data={"token": TOKEN}).status_code == 303
        delivery_id = forwarded.headers["webhook-id"]
        item = f"/admin/deliveries/{delivery_id}"
        eventually(
            lambda: client.get(item, headers=AUTH).json()["state"] == "delivered",
            10,
            "the delivery to be delivered",
        )
        command = curl_of(client.get(f"{UI}/deliveries/{delivery_id}").text)
    run_curl(command)
    _, again = target.wait_for(2)
    assert again.body == body
    verified(again)
    sent_both = set(forwarded.headers) - {"webhook-timestamp", "webhook-signature"}
    assert {k: again.headers[k] for k in sent_both} == {k: forwarded.headers[k] for k in sent_both}
    assert "ingress-box-conversation" in sent_both


@needs_curl
def test_copy_as_curl_of_a_binary_body_sends_the_same_bytes(
    ui: TestClient, box: Box, target: FakeTarget
) -> None:
    """A body that is not text goes through base64 in the command and arrives byte for byte,
    with a signature the target verifies."""
    add_instance(box, target_url=target.url, outbound_secret=OUTBOUND_SECRET)
    body = b"\xff\x00\xfe binary"
    delivery_id = add_delivery(box.db, 1, body=body, content_type="application/octet-stream")
    run_curl(curl_of(ui.get(f"{UI}/deliveries/{delivery_id}").text))
    (received,) = target.wait_for(1)
    assert received.body == body
    assert received.headers["ingress-box-attempt"] == "1"  # what its first attempt sends
    assert signature_holds(received)


def test_copy_as_curl_masks_the_target_password_and_configured_headers(
    ui: TestClient, box: Box
) -> None:
    """The target URL's password and the values of configured headers are masked."""
    add_instance(
        box,
        target_url="http://bot:pw-0123456789@127.0.0.1:9/hook",
        outbound_secret=OUTBOUND_SECRET,
        config={"headers": {"X-Api-Key": "key-abcdefghijklmnop"}},
    )
    delivery_id = add_delivery(box.db, 1)
    command = curl_of(ui.get(f"{UI}/deliveries/{delivery_id}").text)
    assert "http://bot:****@127.0.0.1:9/hook" in command
    assert "x-api-key: ****mnop" in command
    assert "pw-0123456789" not in command and "key-abcdefghijklmnop" not in command
    assert "Signed for webhook-timestamp" in command


def test_copy_as_curl_of_a_pruned_body_says_so(ui: TestClient, box: Box) -> None:
    """With the body pruned the command reads the body from stdin and the page says why."""
    add_instance(box, target_url="http://127.0.0.1:9/hook", outbound_secret=OUTBOUND_SECRET)
    delivery_id = add_delivery(box.db, 1)
    box.db.write(lambda conn: conn.execute("UPDATE deliveries SET body = NULL"))
    command = curl_of(ui.get(f"{UI}/deliveries/{delivery_id}").text)
    assert "The body was pruned" in command and "printf" not in command


def test_no_curl_without_a_forward_target(ui: TestClient, box: Box) -> None:
    """An instance without target_url gets a note instead of a command."""
    add_instance(box, outbound_secret=OUTBOUND_SECRET)
    delivery_id = add_delivery(box.db, 1)
    page = ui.get(f"{UI}/deliveries/{delivery_id}").text
    assert 'id="curl"' not in page and "has no target_url" in page
