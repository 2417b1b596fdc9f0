"""The dashboard's instance forms (create, edit, rotate, delete) and its papercuts: the discard
confirmation, the no-target warning on redrive and replay, the overview's parked lanes."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, MakeDeadLetters
from live import add_instance
from signers import sign_generic
from starlette.testclient import TestClient
from test_backlog import park_a_strict_head
from test_dashboard import csrf_of, log_in, one

from ingress_box.store import instances as store_instances
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

UI = "/admin/ui"
NEW = {"plugin": "generic", "instance": "shop", "target_url": "http://127.0.0.1:9/hook"}


@pytest.fixture
def ui(client: TestClient) -> TestClient:
    assert log_in(client, ADMIN_TOKEN).status_code == 303
    return client


def post(ui: TestClient, path: str, **form: str) -> Any:
    return ui.post(UI + path, data={"csrf": csrf_of(ui, f"{UI}/instances"), **form})


def shown(page: str, name: str) -> str:
    """The value of a secret shown once on a page."""
    match = re.search(rf'id="shown-{name}" data-shown="{name}">([^<]+)</code>', page)
    assert match is not None, f"no {name} on the page"
    return html.unescape(match.group(1))


def instance(box: Box, plugin: str = "generic", name: str = "shop") -> store_instances.Instance:
    found = store_instances.get(box.db, plugin, name)
    assert found is not None
    return found


# -- create ------------------------------------------------------------------------------------


def test_new_instance_form_creates_it_and_shows_its_secrets_once(ui: TestClient, box: Box) -> None:
    """The form makes the instance; the next page shows its secrets and ingress URL, and no
    page after it does."""
    response = post(ui, "/instances", **NEW, lane_policy="strict")
    assert response.status_code == 201
    inst = instance(box)
    assert inst.target_url == NEW["target_url"] and inst.lane_policy == "strict"
    page = response.text
    assert shown(page, "secret") == inst.secret
    assert shown(page, "verify_token") == inst.verify_token
    assert shown(page, "outbound_secret") == inst.outbound_secret
    assert "http://testserver/ingress/generic/shop/events" in page
    for later in (f"{UI}/instances", f"{UI}/instances/generic/shop"):
        assert inst.secret not in ui.get(later).text, later


def test_a_provider_issued_secret_is_hinted_and_warned_about(ui: TestClient) -> None:
    """The form says where Meta's secret is; a meta instance made without one shows the API's
    warning that the generated secret never verifies, and where to paste the URL."""
    form = ui.get(f"{UI}/instances").text
    assert "App settings, Basic" in form
    page = post(ui, "/instances", plugin="meta", instance="wa", target_url=NEW["target_url"]).text
    assert "the generated one never verifies" in page
    assert "Callback URL = http://testserver/ingress/meta/wa/webhook" in page


def test_a_given_secret_is_kept(ui: TestClient, box: Box) -> None:
    """A secret typed into the form is the instance's secret."""
    assert post(ui, "/instances", **NEW, secret="the-provider-secret").status_code == 201
    assert instance(box).secret == "the-provider-secret"


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({**NEW, "instance": "no spaces"}, 400, "instance must match"),
        ({**NEW, "target_url": "ftp://x"}, 400, "target_url must be an http:// or https://"),
        ({**NEW, "plugin": "nope"}, 400, "unknown plugin"),
        ({**NEW, "lane_policy": "random"}, 400, "lane_policy must be one of"),
    ],
    ids=["instance", "target", "plugin", "lanes"],
)
def test_an_invalid_form_is_shown_again_with_the_rules_message(
    ui: TestClient, box: Box, form: dict[str, str], status: int, message: str
) -> None:
    """A value the instance rules refuse re-shows the form with their message; nothing is made."""
    response = post(ui, "/instances", **form)
    assert response.status_code == status
    assert message in html.unescape(response.text) and 'role="alert"' in response.text
    assert one(box.db, "SELECT count(*) FROM instances")[0] == 0


def test_an_existing_instance_is_a_409_on_the_form(ui: TestClient) -> None:
    """Creating an instance twice answers the error table's 409 and message on the form."""
    assert post(ui, "/instances", **NEW).status_code == 201
    again = post(ui, "/instances", **NEW)
    assert again.status_code == 409 and "instance generic/shop already exists" in again.text


def test_the_forms_need_the_csrf_token(ui: TestClient, box: Box) -> None:
    """Create, edit, rotate and delete without the CSRF token are refused and change nothing."""
    assert ui.post(f"{UI}/instances", data={**NEW, "csrf": "forged"}).status_code == 403
    assert post(ui, "/instances", **NEW).status_code == 201
    before = instance(box)
    for action in ("edit", "rotate-secret", "delete"):
        path = f"{UI}/instances/generic/shop/{action}"
        assert ui.post(path, data={"csrf": "forged", "enabled": ""}).status_code == 403, action
    assert instance(box) == before


# -- edit, rotate, delete ------------------------------------------------------------------------


def test_edit_changes_target_lanes_session_and_disables(ui: TestClient, box: Box) -> None:
    """The edit form saves the target, the lane policy and the session; unticked, it disables."""
    post(ui, "/instances", **NEW)
    response = post(
        ui,
        "/instances/generic/shop/edit",
        target_url="http://127.0.0.1:8/new",
        lane_policy="strict",
        session="s1",
    )
    assert response.status_code == 200 and "Saved." in response.text
    inst = instance(box)
    assert (inst.target_url, inst.lane_policy, inst.session, inst.enabled) == (
        "http://127.0.0.1:8/new",
        "strict",
        "s1",
        False,
    )
    assert 'data-health="disabled"' in response.text
    post(ui, "/instances/generic/shop/edit", target_url="", lane_policy="strict", enabled="on")
    assert instance(box).enabled and instance(box).target_url is None


def test_a_masked_target_sent_back_keeps_its_password(ui: TestClient, box: Box) -> None:
    """The edit form shows the target's password masked and saving it unchanged keeps it."""
    secret_url = "http://user:hunter2-password@127.0.0.1:9/hook"
    post(ui, "/instances", **{**NEW, "target_url": secret_url})
    page = ui.get(f"{UI}/instances/generic/shop").text
    assert "hunter2" not in page and 'value="http://user:****@127.0.0.1:9/hook"' in page
    post(
        ui,
        "/instances/generic/shop/edit",
        target_url="http://user:****@127.0.0.1:9/hook",
        lane_policy="progress",
        enabled="on",
    )
    assert instance(box).target_url == secret_url


def test_an_invalid_edit_is_shown_on_the_instance_page(ui: TestClient, box: Box) -> None:
    """A target the rules refuse re-shows the instance page with their message, 400."""
    post(ui, "/instances", **NEW)
    response = post(
        ui, "/instances/generic/shop/edit", target_url="not a url", lane_policy="progress"
    )
    assert response.status_code == 400
    assert "target_url must not contain spaces" in response.text
    assert instance(box).target_url == NEW["target_url"]


def test_rotate_shows_the_new_secret_once_and_keeps_the_old_for_the_grace(
    ui: TestClient, box: Box
) -> None:
    """Rotation shows the new secret on its page; the old one verifies within the grace."""
    post(ui, "/instances", **NEW)
    old = instance(box).secret
    page = post(ui, "/instances/generic/shop/rotate-secret", grace_hours="2").text
    inst = instance(box)
    assert shown(page, "secret") == inst.secret != old
    assert inst.previous_secret == old and "still verifies until" in page
    assert inst.previous_secret_until == pytest.approx(box.clock() + 7200)
    assert inst.secret not in ui.get(f"{UI}/instances/generic/shop").text


def test_rotate_to_a_given_secret_without_grace(ui: TestClient, box: Box) -> None:
    """A typed secret with a grace of 0 replaces the old one at once."""
    post(ui, "/instances", **NEW)
    page = post(
        ui, "/instances/generic/shop/rotate-secret", secret="the-new-one", grace_hours="0"
    ).text
    assert instance(box).secret == "the-new-one" and instance(box).previous_secret is None
    assert "no longer verifies" in page


def test_a_bad_grace_is_shown_on_the_instance_page(ui: TestClient, box: Box) -> None:
    """A grace that is not a number >= 0 is refused on the page; the secret stays."""
    post(ui, "/instances", **NEW)
    old = instance(box).secret
    for grace in ("soon", "-1"):
        response = post(ui, "/instances/generic/shop/rotate-secret", grace_hours=grace)
        assert response.status_code == 400 and "grace" in response.text, grace
    assert instance(box).secret == old


def test_delete_asks_first_then_deletes(ui: TestClient, box: Box) -> None:
    """The instance page links to a confirmation page; its button deletes the instance, and
    its ingress URL refuses webhooks."""
    post(ui, "/instances", **NEW)
    assert (
        f'href="{UI}/instances/generic/shop/delete"' in ui.get(f"{UI}/instances/generic/shop").text
    )
    confirm = ui.get(f"{UI}/instances/generic/shop/delete")
    assert confirm.status_code == 200 and ">Delete generic/shop</button>" in confirm.text
    assert one(box.db, "SELECT count(*) FROM instances")[0] == 1  # asking changed nothing
    done = post(ui, "/instances/generic/shop/delete")
    assert "Deleted generic/shop." in done.text
    assert one(box.db, "SELECT count(*) FROM instances")[0] == 0
    body = b"{}"
    sent = ui.post("/ingress/generic/shop/events", content=body, headers=sign_generic("x", body))
    assert sent.status_code == 404


def test_onboarding_lines_are_on_the_instance_page(
    ui: TestClient, admin_headers: dict[str, str]
) -> None:
    """The instance page says where its URL goes at the provider."""
    ui.post(
        "/admin/instances",
        headers=admin_headers,
        json={"plugin": "github", "instance": "repo", "target_url": NEW["target_url"]},
    )
    page = ui.get(f"{UI}/instances/github/repo").text
    assert "Connect the provider" in page
    assert "Payload URL = http://testserver/ingress/github/repo/events" in page


# -- papercuts ---------------------------------------------------------------------------------


def test_discard_asks_first(ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters) -> None:
    """The dead letters page's Discard leads to a page that says what is lost; only its
    button discards."""
    [dead] = make_dead_letters(box.db)
    listed = ui.get(f"{UI}/dlq?plugin=generic").text
    assert f'<form method="get" action="{UI}/dlq/{dead}/discard">' in listed
    confirm = ui.get(f"{UI}/dlq/{dead}/discard?plugin=generic")
    assert confirm.status_code == 200 and "cannot be redriven" in confirm.text
    assert f'action="{UI}/dlq/{dead}/discard"' in confirm.text and 'method="post"' in confirm.text
    assert one(box.db, "SELECT count(*) FROM dead_letters")[0] == 1
    assert ui.get(f"{UI}/dlq/dlq_nope/discard").status_code == 404


def test_redrive_into_an_instance_without_target_warns(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """Redriving a dead letter of an instance with no target says it will die again."""
    add_instance(box, target_url=None)
    first, second = make_dead_letters(box.db, 2)
    one_ = ui.post(f"{UI}/dlq/redrive", data={"id": first, "csrf": csrf_of(ui)}).text
    assert "Redriven 1. Warning: no target_url on generic/main" in html.unescape(one_)
    every = ui.post(f"{UI}/dlq/redrive", data={"csrf": csrf_of(ui)}).text
    assert "Warning: no target_url on generic/main" in html.unescape(every)


def test_redrive_into_an_instance_with_a_target_does_not_warn(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """With a target, the redrive's message is the plain count."""
    add_instance(box, target_url="http://127.0.0.1:9/hook")
    [dead] = make_dead_letters(box.db)
    page = ui.post(f"{UI}/dlq/redrive", data={"id": dead, "csrf": csrf_of(ui)}).text
    assert "Redriven 1." in page and "Warning" not in page


def test_replay_into_an_instance_without_target_warns(
    ui: TestClient, box: Box, make_dead_letters: MakeDeadLetters
) -> None:
    """Replaying a delivery of an instance with no target says it will die again."""
    add_instance(box, target_url=None)
    make_dead_letters(box.db)
    delivery = one(box.db, "SELECT id FROM deliveries")[0]
    page = ui.post(f"{UI}/deliveries/{delivery}/replay", data={"csrf": csrf_of(ui)}).text
    assert "back in the outbox. Warning: no target_url on generic/main" in html.unescape(page)


def test_overview_explains_the_figures_and_flags_a_parked_lane(ui: TestClient, box: Box) -> None:
    """The overview says what pending and outbox depth count, and names a parked strict lane
    with a link to its dead letters."""
    assert "outbox depth</b> counts the outbox rows" in ui.get(f"{UI}/").text
    assert "data-parked-lane" not in ui.get(f"{UI}/").text
    add_instance(box, lane_policy="strict", target_url="http://127.0.0.1:9/hook")
    park_a_strict_head(box, received_at=time.time() - 60)
    page = ui.get(f"{UI}/").text
    assert 'data-parked-lane="generic/main/c1"' in page
    assert f'href="{UI}/dlq?plugin=generic&amp;instance=main">generic/main, conversation c1' in page
