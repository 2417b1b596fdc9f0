"""The dashboard end to end in a real headless Chromium (Debian's), driven by Playwright.

The box runs for real under uvicorn with its worker, forwarding to a local target. Playwright
never downloads a browser here: it drives the system's ``chromium``.
"""

from __future__ import annotations

import os
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
from test_dashboard import BRIDGE
from waiting import eventually

from ingress_box.config import load_settings
from ingress_box.store import instances as store_instances

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


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $DASHBOARD_SCREENSHOTS when set (to look at them), else tmp_path."""
    folder = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def send(
    live: LiveBox,
    delivery: str,
    instance: str = "main",
    secret: str = SECRET,
    status: int = 202,
    conversation: str | None = None,
) -> None:
    """Post one signed webhook to generic/``instance``, as a provider would."""
    body = b'{"event": "order.paid", "delivery": "%s"}' % delivery.encode()
    headers = {"content-type": "application/json", **sign_generic(secret, body, msg_id=delivery)}
    if conversation is not None:
        headers["x-conversation"] = conversation
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{live.url}/ingress/generic/{instance}/events",
            content=body,
            headers=headers,
        )
    assert response.status_code == status, response.text


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


def test_a_failing_instance_is_flagged_and_a_new_one_is_made_and_tested(
    page: Page, live: LiveBox, target: FakeTarget, shots: Path
) -> None:
    """An instance without a target is flagged failing on the overview; one made through the
    New instance form shows its secrets once, and its test event reaches the target."""
    add_instance(live.box, instance="no-target")
    page.reload()
    flagged = page.locator(".healths li", has_text="generic/no-target")
    expect(flagged.locator('[data-health="failing"]')).to_have_text("failing")
    expect(flagged).to_contain_text("no target_url")

    page.get_by_role("link", name="Instances").click()
    page.get_by_text("New instance").click()
    page.get_by_label("plugin").select_option("github")
    page.get_by_label("instance id").fill("repo")
    page.get_by_label("target URL").fill(target.url)
    page.get_by_role("button", name="Create instance").click()
    expect(page.get_by_role("heading", name="Instance created")).to_be_visible()
    secret = page.locator('[data-shown="secret"]').text_content()
    assert secret is not None
    created = store_instances.get(live.box.db, "github", "repo")
    assert created is not None and secret == created.secret
    expect(page.locator("ul.setup")).to_contain_text("Settings, Webhooks")
    page.screenshot(path=shots / "created-1280.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=shots / "created-390.png", full_page=True)

    page.get_by_role("link", name="To the instance's page").click()
    expect(page.locator("main")).not_to_contain_text(secret)
    page.get_by_role("button", name="Send test event").click()
    expect(page.get_by_role("status")).to_contain_text("delivered (HTTP 200)")
    [probe] = target.wait_for(1)
    assert probe.headers["ingress-box-test"] == "1"


def test_a_quarantined_request_is_admitted_after_rotating_the_secret(
    page: Page, live: LiveBox, target: FakeTarget
) -> None:
    """A request signed with the provider's new secret is kept; Admit refuses it until the
    dashboard's rotate form sets that secret, then admits it and it is delivered."""
    provider_secret = "the-secret-the-provider-has"
    send(live, "evt-kept", secret=provider_secret, status=401)
    page.get_by_role("link", name="Rejected").click()
    reload_until(page, "tr[data-kept]")
    page.get_by_role("button", name="Admit").click()
    expect(page.get_by_role("status")).to_have_text("Still rejected: bad_signature.")

    page.goto(f"{live.url}/admin/ui/instances/generic/main")
    page.get_by_label("new secret").fill(provider_secret)
    page.get_by_label("grace, hours").fill("0")
    page.get_by_role("button", name="Rotate the secret").click()
    expect(page.get_by_role("heading", name="Secret rotated")).to_be_visible()
    expect(page.locator('[data-shown="secret"]')).to_have_text(provider_secret)

    page.get_by_role("link", name="Rejected").click()
    page.get_by_role("button", name="Admit").click()
    expect(page.get_by_role("status")).to_contain_text("Admitted as delivery msg_")
    [arrived] = target.wait_for(1)
    assert arrived.headers["ingress-box-delivery-id"] == "evt-kept"


PAGES = ("", "instances", "instances/generic/main", "deliveries", "dlq", "rejections", "bridges")


def test_every_main_page_fits_a_desktop_and_a_phone(
    page: Page, live: LiveBox, target: FakeTarget, shots: Path
) -> None:
    """With deliveries delivered and dead, a parked strict lane, a rejection and a bridge, no
    main page scrolls sideways at 1280 px or at 390 px; each is screenshotted at both widths."""
    add_instance(live.box, instance="orders", lane_policy="strict", target_url=target.url)
    add_instance(live.box, instance="no-target")
    send(live, "evt-fine")
    target.wait_for(1)
    target.reply(Reply(400, body=b'{"error": "unknown order ord_1234567890abcdef"}'))
    send(live, "evt-refused-by-the-target", instance="orders", conversation="cust-42")
    target.wait_for(2)
    send(live, "evt-behind", instance="orders", conversation="cust-42")
    send(live, "evt-bad-signature", secret="not-the-secret", status=401)
    with httpx.Client(timeout=10) as client:
        made = client.post(
            f"{live.url}/admin/bridges",
            json=BRIDGE,
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    assert made.status_code == 201, made.text
    dead = eventually(
        lambda: live.box.db.read_one("SELECT id FROM deliveries WHERE state = 'dead'"),
        WAIT_MS / 1000,
        "the refused delivery to die",
    )
    pages = [*PAGES, f"deliveries/{dead[0]}"]
    page.goto(f"{live.url}/admin/ui/")
    expect(page.locator("[data-parked-lane]")).to_contain_text(
        "generic/orders, conversation cust-42"
    )
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        for path in pages:
            page.goto(f"{live.url}/admin/ui/{path}")
            if path == "instances":  # the form too, not only its summary line
                page.get_by_text("New instance").click()
            name = (path or "overview").replace("/", "-")
            page.screenshot(path=shots / f"{name}-{width}.png", full_page=True)
            scrolled = page.evaluate("document.documentElement.scrollWidth")
            assert scrolled <= width, f"{path or 'overview'} is {scrolled} px wide at {width} px"
