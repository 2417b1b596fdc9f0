"""The CLI wakes the worker of a running `serve`: work it makes is delivered in seconds.

Without the wake-up, a CLI redrive waited for the once-a-minute sweep (57 s in one report).
Each test runs a real `ingress-box serve` process on a file and the CLI as another process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_target import FakeTarget, Reply
from serving import BoxProcess
from signers import sign_generic
from waiting import eventually

SECRET = "wake-test-secret"
PROMPTLY = 5.0  # seconds from the CLI's exit to the delivery; the sweep would take up to 60


def _cli(db: Path, *args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
    done = subprocess.run(
        [sys.executable, "-m", "ingress_box", *args, "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class Serve(BoxProcess):
    """`ingress-box serve` as a child process; a delivery dies at its first failure."""

    def __init__(self, db: Path) -> None:
        super().__init__(db, env={"INGRESS_BOX_RETRY_MAX_ATTEMPTS": "1"})
        self.wait_ready()

    def add_generic(self, target_url: str, **fields: str) -> None:
        self.add_instance(target_url=target_url, secret=SECRET, **fields)

    def send(self, delivery: str, **headers: str) -> None:
        body = json.dumps({"delivery": delivery}).encode()
        response = httpx.post(
            self.url + "/ingress/generic/main/events",
            content=body,
            headers={
                "content-type": "application/json",
                **sign_generic(SECRET, body, msg_id=delivery),
                **headers,
            },
        )
        assert response.status_code == 202, response.text


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    box = Serve(tmp_path / "box.db")
    try:
        yield box
    finally:
        try:
            box.stop(timeout=20)
        finally:
            box.kill()


def _dead_letters(db: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(_cli(db, "dlq", "list", "--json"))["items"]
    return items


def _delivered(target: FakeTarget, delivery: str) -> bool:
    return any(
        r.headers.get("ingress-box-delivery-id") == delivery
        for r in target.received[1:]  # the first request is the one that failed
    )


def test_a_cli_redrive_is_delivered_by_a_running_serve_within_seconds(
    tmp_path: Path, serve: Serve, target: FakeTarget
) -> None:
    """dlq redrive from the CLI wakes serve's worker: the target has the event in seconds."""
    db = tmp_path / "box.db"
    target.reply(Reply(400, body=b"not yet"), then=Reply(200, body=b"ok"))
    serve.add_generic(target.url)
    serve.send("d-1")
    eventually(lambda: _dead_letters(db), 15, "the event to be dead-lettered")
    assert json.loads(_cli(db, "dlq", "redrive", "--json")) == {"redriven": 1, "remaining": 0}
    eventually(lambda: _delivered(target, "d-1"), PROMPTLY, "the redriven event at the target")


def test_a_cli_discard_lets_a_strict_lane_move_on_within_seconds(
    tmp_path: Path, serve: Serve, target: FakeTarget
) -> None:
    """Discarding a strict lane's dead head from the CLI wakes serve: the next event goes."""
    db = tmp_path / "box.db"
    target.reply(Reply(400, body=b"refused"), then=Reply(200, body=b"ok"))
    serve.add_generic(target.url, lane_policy="strict")
    serve.send("head", **{"x-conversation": "c"})
    (dead,) = eventually(lambda: _dead_letters(db), 15, "the lane's head to be dead-lettered")
    serve.send("next", **{"x-conversation": "c"})  # held behind the parked head
    _cli(db, "dlq", "discard", dead["id"])
    eventually(lambda: _delivered(target, "next"), PROMPTLY, "the next event of the lane")
    assert [r.headers["ingress-box-delivery-id"] for r in target.received] == ["head", "next"]
