"""The dashboard end to end in a real headless Chromium (Debian's), driven by Playwright.

The box runs for real under uvicorn with its worker, forwarding to a local target. Playwright
never downloads a browser here: it drives the system's ``chromium``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN
from fake_target import FakeTarget, Received, Reply
from live import SECRET, LiveBox, add_instance, running_box
from playwright.sync_api import Browser, Page, expect, sync_playwright
from signers import sign_generic
from waiting import eventually

from ingress_box.config import load_settings

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install chromium; CI installs it)"
)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def live(tmp_path: Path, target: FakeTarget) -> Iterator[LiveBox]:
    """The whole box, worker on, with instance generic/main forwarding to ``target``."""
    settings = load_settings({}, db_path=tmp_path / "box.db", admin_token=ADMIN_TOKEN)
    with running_box(settings) as box:
        add_instance(box.box, target_url=target.url)
        yield box


@pytest.fixture
def page(browser: Browser, live: LiveBox) -> Iterator[Page]:
    """A logged-in page of the dashboard."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{live.url}/admin/ui/")
    expect(page).to_have_url(f"{live.url}/admin/ui/login?next=%2Fadmin%2Fui%2F")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    try:
        yield page
    finally:
        context.close()


def send(live: LiveBox, delivery: str) -> None:
    """Post one signed webhook to generic/main, as a provider would."""
    body = b'{"event": "order.paid", "delivery": "%s"}' % delivery.encode()
    headers = {"content-type": "application/json", **sign_generic(SECRET, body, msg_id=delivery)}
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{live.url}/ingress/generic/main/events", content=body, headers=headers
        )
    assert response.status_code == 202, response.text


def reload_until(page: Page, selector: str, timeout: float = WAIT_MS / 1000) -> None:
    """Reload the page until ``selector`` matches (the list pages do not refresh by themselves)."""

    def shown() -> bool:
        if page.locator(selector).count():
            return True
        page.reload()
        return False

    eventually(shown, timeout, f"{selector!r} on {page.url}", interval=0.2)


def row(provider_id: str, state: str) -> str:
    return f'tr[data-provider-id="{provider_id}"] .state.{state}'


def test_log_in_see_a_delivery_arrive_and_redrive_a_dead_letter(
    page: Page, live: LiveBox, target: FakeTarget, tmp_path: Path
) -> None:
    """A delivery shows up delivered, and a dead one is delivered after its Redrive button."""
    send(live, "evt-arrives")
    page.get_by_role("link", name="Deliveries").click()
    reload_until(page, row("evt-arrives", "delivered"))

    target.reply(then=Reply(400, body=b"bad request"))
    send(live, "evt-doomed")
    reload_until(page, row("evt-doomed", "dead"))
    page.screenshot(path=tmp_path / "deliveries.png", full_page=True)

    page.get_by_role("link", name="Dead letters").click()
    dead_row = page.locator('tr[data-provider-id="evt-doomed"]')
    expect(dead_row).to_contain_text("HTTP 400")
    page.screenshot(path=tmp_path / "dead-letters.png", full_page=True)
    target.reply(then=Reply(200, body=b"ok"))
    dead_row.get_by_role("button", name="Redrive").click()
    expect(page.get_by_role("status")).to_have_text("Redriven 1.")

    page.get_by_role("link", name="Deliveries").click()
    reload_until(page, row("evt-doomed", "delivered"))
    doomed = [
        r for r in target.wait_for(3) if r.headers.get("ingress-box-delivery-id") == "evt-doomed"
    ]
    assert len(doomed) == 2  # the 400, then the redrive's 200

    page.locator('tr[data-provider-id="evt-doomed"] a').first.click()
    expect(page.locator("table").first).to_contain_text("400")
    page.screenshot(path=tmp_path / "delivery.png", full_page=True)
    page.get_by_role("link", name="Overview").click()
    page.screenshot(path=tmp_path / "overview.png", full_page=True)


def test_overview_updates_itself_without_a_reload(
    page: Page, live: LiveBox, target: FakeTarget, tmp_path: Path
) -> None:
    """The overview's numbers follow new deliveries through its refresh script."""
    received = page.locator('[data-stat="received_hour"]')
    expect(received).to_have_text("0")
    send(live, "evt-live")
    target.wait_for(1)
    expect(received).to_have_text("1", timeout=WAIT_MS)  # the script polls every 5 s
    expect(page.locator('[data-stat="delivered_hour"]')).to_have_text("1", timeout=WAIT_MS)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.screenshot(path=tmp_path / "overview-phone.png", full_page=True)


def test_a_delivery_page_on_a_phone_shows_each_attempt_and_replays(
    page: Page, live: LiveBox, target: FakeTarget, tmp_path: Path
) -> None:
    """On a phone, a delivery's attempts show their error and answer within the screen; its
    Copy button copies the curl command; its Replay button sends it to the target again."""
    target.reply(Reply(503, body=b"busy, come back"), then=Reply(200, body=b'{"ok": true}'))
    send(live, "evt-phone")
    target.wait_for(2)
    page.set_viewport_size({"width": 390, "height": 844})
    page.get_by_role("link", name="Deliveries").click()
    reload_until(page, row("evt-phone", "delivered"))
    page.locator('tr[data-provider-id="evt-phone"] a').first.click()
    first = page.locator('tr[data-attempt="1"]')
    for label, text in (("error", "HTTP 503: busy, come back"), ("answer", "busy, come back")):
        cell = first.locator(f'td[data-label="{label}"]')
        expect(cell).to_have_text(text)
        box = cell.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, label
    answer = page.locator('tr[data-attempt="2"] td[data-label="answer"]')
    expect(answer).to_have_text('{"ok": true}')
    page.screenshot(path=tmp_path / "delivery-phone.png", full_page=True)

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.locator("#curl").text_content()
    assert "webhook-signature: v1," in copied

    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_contain_text("Replaying")

    def replayed() -> list[Received]:
        return [r for r in target.received if r.headers["ingress-box-delivery-id"] == "evt-phone"]

    third = eventually(lambda: replayed()[2:], WAIT_MS / 1000, "the replay at the target")[0]
    assert third.headers["webhook-id"] == replayed()[0].headers["webhook-id"]
