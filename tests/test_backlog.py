"""The backlog's figures are defined once: the dashboard, /metrics and stats say the same."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from clirun import ok
from conftest import ADMIN_TOKEN
from live import SECRET, add_instance
from prometheus_client.parser import text_string_to_metric_families
from signers import sign_generic
from starlette.testclient import TestClient

from ingress_box.app import create_app
from ingress_box.config import DatabaseUrl, load_settings
from ingress_box.store.deliveries import NewDelivery, accept
from ingress_box.store.outbox import Outcome, claim, record_outcome
from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def gauges(exposition: str) -> dict[str, float]:
    """The unlabelled samples of a Prometheus text exposition, by name."""
    return {
        s.name: s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if not s.labels
    }


def park_a_strict_head(box: Box, received_at: float) -> None:
    """Accept an event in lane c1 and settle it dead, as the worker does for a strict instance."""
    head = NewDelivery(
        id="msg_head",
        plugin_id="generic",
        instance_id="main",
        route="events",
        provider_delivery_id="head",
        conversation="c1",
        method="POST",
        subpath="",
        content_type="application/json",
        headers="{}",
        body=b"{}",
        received_at=received_at,
    )
    now = time.time()

    def op(conn: sqlite3.Connection) -> None:
        assert accept(conn, head)
        [row] = claim("tests", now, 60, 10)(conn)
        assert record_outcome(
            Outcome(
                seq=row.seq,
                owner="tests",
                outcome="dead",
                started_at=now,
                duration_ms=1.0,
                status_code=500,
                error="HTTP 500",
                dead_letter_id="dlq_head",
                strict=True,
            ),
            now,
        )(conn)

    box.db.write(op)


def test_a_parked_lane_reads_the_same_on_the_dashboard_metrics_and_stats(
    store: Path | DatabaseUrl,
) -> None:
    """With a strict lane parked behind its dead head, all three count both rows in the depth,
    the head as parked and as an open dead letter, and age only the event still pending."""
    settings = load_settings({}, db_path=store, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings, run_worker=False)) as client:
        box: Box = client.app.state.box  # type: ignore[attr-defined]
        add_instance(box, lane_policy="strict", target_url="http://127.0.0.1:9/hook")
        park_a_strict_head(box, received_at=time.time() - 3600)
        body = b'{"n": 2}'
        headers = {
            "content-type": "application/json",
            **sign_generic(SECRET, body, msg_id="second"),
            "x-conversation": "c1",
        }
        accepted = client.post("/ingress/generic/main/events", content=body, headers=headers)
        assert accepted.status_code == 202
        login = {"token": ADMIN_TOKEN}
        assert client.post("/admin/ui/login", data=login, follow_redirects=False).status_code == 303
        overview = client.get("/admin/ui/api/overview").json()["stats"]
        metrics = gauges(client.get("/metrics", headers=AUTH).text)
        figures = json.loads(ok("stats", "--db", str(settings.db_path), "--json").stdout)
    stats = figures["outbox"]

    assert overview["outbox_depth"] == metrics["ingress_box_outbox_depth"] == stats["depth"] == 2
    assert overview["parked"] == metrics["ingress_box_outbox_parked"] == stats["parked"] == 1
    assert stats["waiting"] == 1
    assert (
        overview["dead_open"]
        == metrics["ingress_box_dead_letters_open"]
        == figures["dead_letters"]["open"]
        == 1
    )
    # The parked head is an hour old; the oldest pending event is the one just received.
    assert metrics["ingress_box_outbox_oldest_age_seconds"] < 60
    assert stats["oldest_pending_age_seconds"] < 60
    assert overview["oldest_pending_age"].endswith(" s")
