"""Health per instance: the states, their figures, through the real app, worker and target."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clirun import ok
from conftest import box_of
from fake_target import FakeTarget, Reply
from live import SECRET, LiveBox, add_instance, running_box
from signers import sign_generic
from starlette.testclient import TestClient
from waiting import eventually

from ingress_box import instance_health
from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, Settings, load_settings
from ingress_box.store import Database
from ingress_box.store.health import Record
from ingress_box.store.instances import Instance

AUTH = {"authorization": "Bearer " + "t" * 16}
HOUR = 3600.0
SCHEMA_0_1_0 = Path(__file__).parent / "data" / "schema-0.1.0.sql"

pytestmark = pytest.mark.both_stores  # the upgraded file's test is SQLite's alone (no store)


def box_settings(store: Path | DatabaseUrl, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "db_path": store,
        "admin_token": "t" * 16,
        "retry_max_attempts": 3,
        "retry_base_seconds": 30,
        "retry_max_seconds": 30,
        "delivery_timeout_seconds": 2,
    }
    return load_settings({}, **{**values, **changes})


# The target's failure: its Retry-After floors the jittered backoff and max_seconds caps it, so
# a failed delivery waits exactly 30 s and stays pending while the test looks. (The jitter
# alone, uniform from 0 to 30 s, retried it within the test now and then.)
FAIL = Reply(500, retry_after=30)


@pytest.fixture
def live(store: Path | DatabaseUrl, target: FakeTarget) -> Iterator[LiveBox]:
    with running_box(box_settings(store)) as box:
        add_instance(box.box, target_url=target.url)
        yield box


def send(live: LiveBox, n: int) -> None:
    body = json.dumps({"n": n}).encode()
    headers = {"content-type": "application/json", **sign_generic(SECRET, body, msg_id=f"e{n}")}
    answer = httpx.post(live.url + "/ingress/generic/main/events", content=body, headers=headers)
    assert answer.status_code == 202, answer.text


def health_of(live: LiveBox, instance: str = "main") -> dict[str, Any]:
    answer = httpx.get(f"{live.url}/admin/instances/generic/{instance}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["health"]
    return found


def health_when(live: LiveBox, what: str, **expected: Any) -> dict[str, Any]:
    """The health once every field in ``expected`` has its value."""

    def matches() -> dict[str, Any] | None:
        found = health_of(live)
        return found if all(found[k] == v for k, v in expected.items()) else None

    return eventually(matches, 15, what)


# -- through the real box --------------------------------------------------------------------


def test_an_instance_no_attempt_has_reached_is_idle(live: LiveBox) -> None:
    """Before any attempt: idle, every figure empty."""
    assert health_of(live) == {
        "state": "idle",
        "reason": "no attempt yet",
        "problems": [],
        "last_success_at": None,
        "last_failure_at": None,
        "failing_since": None,
        "consecutive_failures": 0,
        "last_error": None,
        "pending": 0,
        "dead_letters_open": 0,
    }


def test_a_failed_attempt_makes_the_instance_failing_with_the_delivery_pending(
    live: LiveBox, target: FakeTarget
) -> None:
    """The target answers 500: failing, one failure, the error, the delivery still pending."""
    target.reply(FAIL, then=FAIL)
    send(live, 1)
    found = health_when(live, "one failure", consecutive_failures=1)
    assert found["state"] == "failing"
    assert found["reason"] == "the last attempt failed: HTTP 500"
    assert found["last_error"] == "HTTP 500"
    assert found["pending"] == 1 and found["dead_letters_open"] == 0
    assert found["failing_since"] == found["last_failure_at"] is not None
    assert found["last_success_at"] is None


def test_a_success_after_failures_makes_it_ok_again(live: LiveBox, target: FakeTarget) -> None:
    """A failing instance whose next attempt succeeds is ok: the run and its start cleared."""
    target.reply(FAIL, then=200)
    send(live, 1)
    failing = health_when(live, "one failure", consecutive_failures=1)
    send(live, 2)  # answered 200, while the first waits for its retry
    found = health_when(live, "a success", state="ok")
    assert found["consecutive_failures"] == 0 and found["failing_since"] is None
    assert found["last_error"] is None and found["reason"] is None
    assert found["last_success_at"] >= failing["last_failure_at"]
    assert found["last_failure_at"] == failing["last_failure_at"]
    assert found["pending"] == 1  # the first delivery still waits for its retry


def test_failures_until_the_dead_letter_count_in_a_row(
    store: Path | DatabaseUrl, target: FakeTarget
) -> None:
    """Every attempt fails until the delivery is dead: 3 in a row, one dead letter open,
    failing since the first."""
    settings = box_settings(store, retry_base_seconds=0.05, retry_max_seconds=0.1)
    target.reply(then=503)
    with running_box(settings) as live:
        add_instance(live.box, target_url=target.url)
        send(live, 1)
        found = health_when(live, "a dead letter", dead_letters_open=1)
    assert found["state"] == "failing"
    assert found["consecutive_failures"] == 3 and found["pending"] == 0
    assert found["reason"] == "the last 3 attempts failed: HTTP 503"
    assert found["failing_since"] < found["last_failure_at"]


def test_a_disabled_instance_is_disabled_whatever_its_record(
    live: LiveBox, target: FakeTarget
) -> None:
    """Disabled wins over a failing record."""
    target.reply(then=500)
    send(live, 1)
    health_when(live, "one failure", consecutive_failures=1)
    answer = httpx.patch(
        f"{live.url}/admin/instances/generic/main", headers=AUTH, json={"enabled": False}
    )
    assert answer.status_code == 200, answer.text
    found = health_of(live)
    assert found["state"] == "disabled"
    assert found["reason"] == "its ingress refuses webhooks until it is enabled"
    assert found["consecutive_failures"] == 1


def test_an_instance_without_a_target_is_failing_with_the_problem_named(live: LiveBox) -> None:
    """A forward instance with no target_url cannot deliver: failing, problem listed."""
    add_instance(live.box, instance="nowhere", target_url=None)
    found = health_of(live, "nowhere")
    assert found["state"] == "failing"
    assert found["problems"] == ["no target_url"] and found["reason"] == "no target_url"


def test_the_list_carries_each_instance_s_own_health(live: LiveBox, target: FakeTarget) -> None:
    """GET /admin/instances: every item has its health, not its neighbour's."""
    add_instance(live.box, instance="nowhere", target_url=None)
    add_instance(live.box, instance="off", target_url=target.url, enabled=False)
    answer = httpx.get(f"{live.url}/admin/instances", headers=AUTH)
    states = {i["instance"]: i["health"]["state"] for i in answer.json()["items"]}
    assert states == {"main": "idle", "nowhere": "failing", "off": "disabled"}


def test_a_new_instance_of_a_removed_one_s_name_starts_clean(
    live: LiveBox, target: FakeTarget
) -> None:
    """Deleting an instance forgets its record; its deliveries stay, so they still count."""
    target.reply(FAIL, then=FAIL)
    send(live, 1)
    health_when(live, "one failure", consecutive_failures=1)
    assert httpx.delete(f"{live.url}/admin/instances/generic/main", headers=AUTH).status_code == 204
    add_instance(live.box, target_url=target.url)
    found = health_of(live)
    assert (found["state"], found["consecutive_failures"], found["pending"]) == ("ok", 0, 1)
    assert found["last_failure_at"] is None and found["failing_since"] is None


def test_the_cli_lists_and_shows_the_health(live: LiveBox, target: FakeTarget) -> None:
    """`instances list` has a HEALTH column; `show` says why, `show --json` is the API's."""
    target.reply(FAIL, then=FAIL)
    send(live, 1)
    health_when(live, "one failure", consecutive_failures=1)
    db = str(live.box.settings.db_path)
    listed = ok("instances", "list", "--db", db).output.splitlines()
    assert listed[0].split()[-1] == "HEALTH"
    assert listed[1].split()[:2] == ["generic", "main"] and listed[1].split()[-1] == "failing"
    shown = json.loads(ok("instances", "show", "generic", "main", "--db", db, "--json").output)
    assert shown["health"] == health_of(live)
    text = ok("instances", "show", "generic", "main", "--db", db).output
    assert "failures in a row: 1" in text and "pending:           1" in text
    assert "health:            failing (the last attempt failed: HTTP 500)" in text


# -- the rule, one state at a time ---------------------------------------------------------------


def _instance(**fields: Any) -> Instance:
    values: dict[str, Any] = {
        "plugin_id": "generic",
        "instance_id": "main",
        "secret": "s",
        "outbound_secret": "whsec_x",
        "created_at": 0.0,
        "updated_at": 0.0,
        "target_url": "http://127.0.0.1:9/hook",
    }
    return Instance(**{**values, **fields})


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("inst", "record", "state"),
    [
        (_instance(), Record(last_success_at=NOW - 60), "ok"),
        (_instance(), Record(), "idle"),
        (_instance(), Record(last_success_at=NOW - 25 * HOUR), "idle"),
        (_instance(), Record(last_success_at=NOW - 25 * HOUR, pending=1), "ok"),
        (_instance(), Record(pending=3), "ok"),
        (_instance(), Record(consecutive_failures=1, last_failure_at=NOW - 30 * HOUR), "failing"),
        (_instance(target_url=None), Record(last_success_at=NOW), "failing"),
        (_instance(target_url="  "), Record(), "failing"),
        (_instance(target_url=None, handler="pkg.mod:fn"), Record(), "idle"),
        (_instance(enabled=False, target_url=None), Record(consecutive_failures=4), "disabled"),
    ],
    ids=[
        "ok",
        "never",
        "quiet-a-day",
        "quiet-but-waiting",
        "first-to-come",
        "failing-stays-failing",
        "no-target",
        "blank-target",
        "own-handler-needs-none",
        "disabled-first",
    ],
)
def test_the_state_is_the_first_rule_that_applies(
    inst: Instance, record: Record, state: str
) -> None:
    """disabled, then failing (a problem or the last attempt failed), then idle, then ok."""
    assert instance_health.health(inst, record, NOW).state == state


# -- an upgraded file ------------------------------------------------------------------------------


def test_an_upgraded_file_knows_its_instances_health_from_its_attempts(tmp_path: Path) -> None:
    """Migration 3 fills the record from the attempts a 0.1.0 file already holds."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_0_1_0.read_text(encoding="utf-8"))
    for seq, outcomes in ((1, ["retry", "delivered"]), (2, ["retry", "dead"]), (3, ["retry"])):
        conn.execute(
            "INSERT INTO deliveries (seq, id, plugin_id, instance_id, route, "
            "provider_delivery_id, method, received_at) "
            "VALUES (?, ?, 'generic', 'main', 'events', ?, 'POST', 0)",
            (seq, f"msg_{seq}", f"p{seq}"),
        )
        for i, outcome in enumerate(outcomes):
            at = seq * 100 + i * 10
            conn.execute(
                "INSERT INTO attempts (delivery_seq, attempt, started_at, duration_ms, outcome) "
                "VALUES (?, ?, ?, 1000, ?)",
                (seq, i + 1, at, outcome),
            )
    conn.commit()
    conn.close()
    db = Database(path).open()
    try:
        record = instance_health.of(db, [_instance()], NOW)[("generic", "main")].record
    finally:
        db.close()
    # Attempts end at started_at + 1 s: a success at 111, failures at 201, 211 and 301.
    assert (record.last_success_at, record.last_failure_at) == (111, 301)
    assert (record.consecutive_failures, record.failing_since) == (3, 201)
    assert record.last_dead_at == 211


# -- the dashboard -----------------------------------------------------------------------------


def test_the_dashboard_shows_a_failing_instance_unlike_a_healthy_one(
    store: Path | DatabaseUrl, target: FakeTarget
) -> None:
    """A failing instance has a badge that says so and the reason; a healthy one says ok; the
    instance page has every figure; the overview lists the failing one first."""
    target.answer_with(
        lambda got: Reply(500) if got.headers["ingress-box-instance"] == "zzz" else Reply(200)
    )
    with TestClient(create_app(box_settings(store))) as ui:
        box = box_of(ui)
        add_instance(box, instance="aaa", target_url=target.url)
        add_instance(box, instance="zzz", target_url=target.url)
        for instance in ("aaa", "zzz"):
            body = b"{}"
            headers = {"content-type": "application/json", **sign_generic(SECRET, body)}
            sent = ui.post(f"/ingress/generic/{instance}/events", content=body, headers=headers)
            assert sent.status_code == 202
        target.wait_for(2)

        def states() -> dict[str, str] | None:
            items = ui.get("/admin/instances", headers=AUTH).json()["items"]
            found = {i["instance"]: i["health"]["state"] for i in items}
            return found if found == {"aaa": "ok", "zzz": "failing"} else None

        eventually(states, 15, "one instance ok, the other failing")
        assert ui.post("/admin/ui/login", data={"token": "t" * 16}).status_code == 200
        listing = ui.get("/admin/ui/instances").text
        overview = ui.get("/admin/ui/").text
        page = ui.get("/admin/ui/instances/generic/zzz").text
    failing = '<span class="health failing" data-health="failing">failing</span>'
    healthy = '<span class="health ok" data-health="ok">ok</span>'
    reason = "the last attempt failed: HTTP 500"
    assert failing in listing and healthy in listing and reason in listing
    assert overview.index("generic/zzz") < overview.index("generic/aaa")
    assert failing in overview and reason in overview
    for label in ("last success", "last failure", "failing since", "failures in a row"):
        assert f"<dt>{label}</dt>" in page
    assert "<dt>pending</dt>" in page and "<dt>dead letters open</dt>" in page
    assert reason in page
